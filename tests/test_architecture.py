"""The package's shape, as docs/architecture.md describes it: layers that import downwards only,
no import circle, imports at module level (the CLI alone defers them, for start-up time), small
modules and functions, and each method registered once."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kronbit"
# Lower layers first; a module may import its own layer or any layer listed before it.
LAYERS = [
    ["core"],
    ["models"],         # Hugging Face loading; data augmentation reads a teacher through it
    ["data", "distill", "kron", "layerdrop"],
    ["quant"],          # quantizes Kronecker factors too, so it sits above kron
    ["formats"],
    ["workflows"],
    ["runner"],
    ["cli"],
]
LAYER_OF = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
# Imported where they are used, because they are optional or only needed on one path: the hub
# datasets route, the onnxruntime check, the compiler that builds the C++ kernel on first use.
DEFERRED_OK = ("datasets", "onnxruntime", "torch.utils.cpp_extension")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
        return [base] if base.startswith("kronbit") else []
    pkg = module.split(".") if is_package else module.split(".")[:-1]
    pkg = pkg[:len(pkg) - (node.level - 1)]
    base = ".".join(pkg + ([node.module] if node.module else []))
    return [base] if node.module else [f"{base}.{a.name}" for a in node.names]


def _module_level_imports() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        tree = ast.parse(f.read_text())
        deps: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                for target in _resolve(name, f.name == "__init__.py", node):
                    while target and target not in mods:  # "from .x import name" → module x
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        deps.add(target)
        graph[name] = deps
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def test_no_import_cycle():
    graph = _module_level_imports()
    # A package's __init__ importing its own submodules is how packages work; a submodule that
    # needs the package init back is the circle we forbid.
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [n, d])
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert not cycles, f"import cycles: {cycles}"


def test_layers_import_downwards_only():
    bad = []
    for mod, deps in _module_level_imports().items():
        room = _room(mod)
        if room not in LAYER_OF:
            continue
        for d in deps:
            droom = _room(d)
            if droom in LAYER_OF and LAYER_OF[droom] > LAYER_OF[room]:
                bad.append(f"{mod} -> {d}")
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(sorted(bad))


def _function_imports(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                elif isinstance(sub, ast.ImportFrom):
                    names = [sub.module or ""] if sub.level == 0 else ["(relative)"]
                else:
                    continue
                if not all(n.startswith(DEFERRED_OK) for n in names):
                    lines.append(sub.lineno)
    return lines


def test_imports_at_module_level():
    found = {}
    for name, f in _modules().items():
        if name == "kronbit.cli":  # the command line defers imports: `kronbit --help` stays fast
            continue
        lines = _function_imports(ast.parse(f.read_text()))
        if lines:
            found[name] = lines
    assert not found, f"imports inside functions (module: line numbers): {found}"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_small_modules_and_functions(path: Path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name}: {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name}() has {length} lines"


def test_each_method_registered_once():
    import kronbit.formats  # noqa: F401  (imports every method package)
    import kronbit.runner  # noqa: F401
    from kronbit.core.transforms import METHODS
    from kronbit.runner.recipe import RUN_METHODS

    assert set(METHODS) == {"quant", "kron"}
    assert {m.name for m in RUN_METHODS.values()} == {"glue", "kngpt2"}
    registrations = [line for f in SRC.rglob("*.py") for line in f.read_text().splitlines()
                     if line.lstrip().startswith(("register_transform(", "GLUE = register_run_method(",
                                                  "LM = register_run_method("))]
    assert len(registrations) == 4


def test_no_tracked_symlinks():
    """A committed symlink checks out over whatever the path held (git replaces ignored
    directories such as benchmarks/_work without asking), so the tree tracks none."""
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    staged = subprocess.run(["git", "ls-files", "-s"], cwd=root, capture_output=True, text=True, check=True)
    links = [line.split("\t", 1)[1] for line in staged.stdout.splitlines() if line.startswith("120000 ")]
    assert links == []
