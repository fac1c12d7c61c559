"""The package's import graph, read from its source (nothing is imported): no module imports itself
through others, and a module imports inside a function only what an optional dependency or the
torch-free ``visattn --help`` asks to be imported late.

Every import statement is an edge: at the top of a module, under ``if TYPE_CHECKING:``, or inside a
function, since an import that runs late still ties the two modules together.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "visattn"

# Third-party packages visattn installs only with an extra (pyproject.toml's optional-dependencies):
# a module imports them where they are used, so the rest works without them.
OPTIONAL_DEPENDENCIES = {
    "matplotlib": "viz",
    "tensorboard": "tensorboard",
    "torch.utils.tensorboard": "tensorboard (needs the tensorboard package)",
    "sklearn": "demo",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "av": "video",
}

# Modules that `visattn --help` and `visattn CMD --help` import: they may import inside a function a
# module that imports torch (directly or through its own top-level imports), so help starts without it.
TORCH_FREE_HELP = {"visattn", "visattn.__main__", "visattn.cli"} | {
    f"visattn.commands.{p.stem}" for p in (PACKAGE / "commands").glob("*.py") if p.stem != "__init__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}

def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The absolute names ``node`` (in ``module``) imports: for ``from X import y`` the submodule
    ``X.y`` where there is one, else ``X``."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        parts = module.split(".")
        anchor = parts if _is_package(module) else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in MODULES else base


def _imports(module: str) -> Iterator[tuple[str, ast.AST, bool]]:
    """``(imported name, node, inside a function)`` of every import statement in ``module``."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[str, ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in _imported(module, child):
                    yield name, child, in_function
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from walk(child, inner)

    yield from walk(tree, False)


IMPORTS = {module: list(_imports(module)) for module in MODULES}


def _packages_run_first(module: str, name: str) -> set[str]:
    """The packages whose ``__init__`` importing ``name`` runs before it (``a.b`` for ``a.b.c``),
    but for those holding ``module`` itself, which are already being imported when it runs."""
    parts = name.split(".")
    ancestors = {".".join(parts[:i]) for i in range(2, len(parts))}
    return {p for p in ancestors if p in MODULES and not module.startswith(p + ".")}


def _graph() -> dict[str, set[str]]:
    """module -> the package's modules importing it runs: those it names, and the packages holding
    them. The root package is no target: it imports its public names on first use (PEP 562), so
    importing it runs none of the package's modules."""
    graph = {}
    for module in MODULES:
        targets = set()
        for name, _, _ in IMPORTS[module]:
            if name in MODULES:
                targets |= {name} | _packages_run_first(module, name)
        graph[module] = targets - {"visattn", module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _imports_torch(graph_top: dict[str, set[str]], module: str) -> bool:
    """Whether importing ``module`` imports torch: it names torch (or a package outside visattn that
    needs it) at its top, or one of the package's modules it imports at its top does."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current not in MODULES:
            if current.split(".")[0] in ("torch", "torchvision", "torchmetrics", "timm", "safetensors"):
                return True
            continue
        todo.extend(graph_top[current])
    return False


def _top_level_graph() -> dict[str, set[str]]:
    """module -> every name importing it imports (outside its functions): the package's modules, the
    packages holding them, and third-party modules."""
    graph = {}
    for module in MODULES:
        names = {name for name, _, inside in IMPORTS[module] if not inside}
        graph[module] = {p for name in names for p in {name} | _packages_run_first(module, name)} - {"visattn"}
    return graph


def _allowed(module: str, name: str, top_level: dict[str, set[str]]) -> bool:
    if any(name == dep or name.startswith(dep + ".") for dep in OPTIONAL_DEPENDENCIES):
        return True
    return module in TORCH_FREE_HELP and _imports_torch(top_level, name)


def _late_imports(modules: set[str]) -> list[str]:
    top_level = _top_level_graph()
    return [f"{MODULES[module].relative_to(PACKAGE.parent)}:{node.lineno}: {name}"
            for module in sorted(modules) for name, node, inside in IMPORTS[module]
            if inside and not _allowed(module, name, top_level)]


def test_graph_reads_every_module():
    graph = _graph()
    assert len(MODULES) > 50
    validation = graph["visattn.engine.config.validation"]
    assert {"visattn.data", "visattn.models", "visattn.engine.config.schema"} <= validation
    assert "visattn.engine.config" in graph["visattn.engine.trainer"]  # from .config import ...
    assert "visattn.engine" in graph["visattn.hub"]  # importing visattn.engine.config runs engine/__init__ first
    assert "visattn.engine" not in graph["visattn.engine.trainer"]  # already running when trainer is imported
    assert "visattn" not in graph["visattn.hub"]  # from . import __version__
    assert any(name == "huggingface_hub" for name, _, _ in IMPORTS["visattn.hub"])


def test_cycles_are_strongly_connected_components():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "a"}}) == [["a", "b"], ["c", "d"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_others():
    cycles = _cycles(_graph())
    assert not cycles, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_in_function_imports_only_for_optional_dependencies_or_torch_free_help():
    late = _late_imports(set(MODULES))
    assert not late, ("imports inside functions that neither an optional dependency nor the torch-free "
                      "`visattn --help` needs (import at the top of the module):\n" + "\n".join(late))


@pytest.mark.parametrize("module, name, allowed", [
    ("visattn.engine.run_dir", "matplotlib.pyplot", True),  # an optional dependency, anywhere
    ("visattn.engine.run_dir", "onnxruntime", True),
    ("visattn.engine.run_dir", "torch", False),
    ("visattn.engine.run_dir", "json", False),
    ("visattn.cli", "torch", True),  # help imports the CLI without torch
    ("visattn.cli", "visattn.engine.config", True),  # imports torch at its top
    ("visattn.cli", "visattn._extras", False),  # imports no torch: belongs at the top
    ("visattn.cli", "json", False),
])
def test_allow_list(module, name, allowed):
    assert _allowed(module, name, _top_level_graph()) is allowed
