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
