"""Finding and loading specs: a path, YAML text, or the name of a zoo example."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

from einattn.ir import Cascade, Loc, SpecError, parse_spec

Spec = Cascade


def zoo_names() -> list[str]:
    root = importlib.resources.files("einattn.examples")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def zoo_path(name: str):
    return importlib.resources.files("einattn.examples") / f"{name}.yaml"


def load_spec(source) -> Spec:
    """Load a spec from a path, YAML text or a zoo name.

    >>> load_spec("softmax").outputs
    ('O',)
    """
    if isinstance(source, Cascade):
        return source
    traced = getattr(source, "__einattn_cascade__", None)     # an @einattn.attention function
    if traced is not None:
        return traced()
    if isinstance(source, Path):
        return _load_file(source)
    if not isinstance(source, str):
        raise SpecError("cannot load a spec from this", loc=Loc("<spec>"),
                        expected="a path, YAML text or a zoo name", found=type(source).__name__)
    if not source.strip():
        raise SpecError("empty spec", loc=Loc("<string>"), expected="a path, YAML text or a zoo name")
    p = Path(source)
    try:
        exists = p.is_file()
    except (OSError, ValueError):
        exists = False
    if "\n" in source or ":" in source and not exists:
        return parse_spec(source, "<string>")
    if p.suffix in (".yaml", ".yml") or exists:
        return _load_file(p)
    if source in zoo_names():
        ref = zoo_path(source)
        return parse_spec(ref.read_text(), f"examples/{source}.yaml")
    raise SpecError(f"no spec named '{source}'", loc=Loc(source),
                    expected="a .yaml path, YAML text or one of: " + ", ".join(zoo_names()),
                    fix="check the name or path")


def _load_file(p: Path) -> Spec:
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError("cannot read spec file", loc=Loc(str(p)), found=str(e)) from None
    return parse_spec(text, str(p))


def dump_spec(c: Spec, comments: dict[str, str] | None = None) -> str:
    """A cascade as spec YAML text: ``load_spec(dump_spec(c))`` gives a cascade with the same
    structural hash (``name`` and ``doc`` are kept too). ``comments`` (statement name -> text)
    are written as YAML comments after the statements (a traced function's source lines).

    >>> load_spec(dump_spec(load_spec("gqa"))) == load_spec("gqa")
    True
    """
    import yaml

    def q(s: str) -> str:             # a YAML scalar that reads back as this exact string
        return yaml.safe_dump(s, default_style=None, width=10_000).removesuffix("\n...\n").rstrip("\n")

    lines = ["einattn: 1", f"name: {q(c.name)}"]
    if c.doc:
        lines.append(f"doc: {q(c.doc)}")
    if c.key != "n":
        lines.append(f"key_index: {q(c.key)}")
    lines.append("inputs:")
    lines += [f"  {q(t.name)}: [{', '.join(q(i) for i in t.indices)}]" for t in c.inputs]
    if c.params:
        lines.append("params:")
        lines += [f"  {q(p.name)}: {q(str(p.expr))}" for p in c.params]
    lines.append("cascade:")
    comments = comments or {}
    lines += [f"  - {q(_stmt_text(s))}" + (f"    # {comments[s.name]}" if s.name in comments else "")
              for s in c.stmts]
    lines.append(f"outputs: [{', '.join(q(o) for o in c.outputs)}]")
    return "\n".join(lines) + "\n"


def _stmt_text(s) -> str:
    lhs = f"{s.name}[{','.join(s.indices)}]" if s.indices else s.name
    return f"{lhs} {s.reduce.value} {s.expr}"
