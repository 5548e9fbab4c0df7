"""The layers of the design, checked on the source: data flows spec -> ir -> compiler -> autotune ->
backends + templates, and nothing below the front door (``einattn/``) imports it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> import prefixes of ours it may use (besides itself)
ALLOWED = {
    "ir": (),
    "compiler": ("einattn.ir",),
    "autotune": ("einattn.ir", "einattn.compiler", "einattn.backends"),
    "backends": ("einattn.ir", "einattn.compiler"),
    "templates": (),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = ["einattn", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    """The package a relative import in ``path`` starts from (its own package)."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def _files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def _resolve(path: Path, node_module: str | None, level: int) -> str:
    base = package_of(path).split(".")
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([node_module] if node_module else []))


def our_imports(path: Path) -> list[tuple[str, int, bool]]:
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.split(".")[0] == "einattn"]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(path, node.module, node.level) if node.level else node.module
            if mod and mod.split(".")[0] == "einattn":
                # `from .. import cache` imports a module: name it
                out += [(f"{mod}.{a.name}", node.lineno, id(node) in top) for a in node.names
                        if (ROOT / Path(*f"{mod}.{a.name}".split(".")[1:])).with_suffix(".py").exists()]
                out.append((mod, node.lineno, id(node) in top))
    return out


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_lower_layers_never_import_upward(folder):
    own = f"einattn.{folder}"
    bad = []
    for f in _files(folder):
        for mod, line, _ in our_imports(f):
            if mod == own or mod.startswith(own + ".") or any(mod == p or mod.startswith(p + ".")
                                                             for p in ALLOWED[folder]):
                continue
            bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_backend_modules_import_each_other_without_cycles():
    """Module-level imports inside backends/ form a DAG (a cycle hidden by a function-local
    import counts too: every import is followed)."""
    graph: dict[str, set[str]] = {}
    for f in _files("backends"):
        me = module_name(f)
        graph[me] = {m for m, _, _ in our_imports(f) if m.startswith("einattn.backends") and m != me}
    names = set(graph)
    for k in graph:            # `from .x import y` may name a module or a name in a package
        graph[k] = {m if m in names else m.rsplit(".", 1)[0] for m in graph[k]} & names
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m] if m in stack else [n, m]
                pytest.fail("import cycle: " + " -> ".join(cyc))
            if m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
