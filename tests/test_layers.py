"""The layer contract, read from the source (every import, local ones included):

* pomp_core's library layer (everything outside ``pomp_core.pretrain`` and
  ``pomp_core.transfer``) never imports those two, which are its consumers;
* ``pomp_core.pretrain`` and ``pomp_core.transfer`` never import each other;
* pomp_core never imports pomp_det, pomp_seg or pomp_world; pomp_det and pomp_seg never
  import each other or pomp_world (tools -> world -> det / seg -> core);
* no package imports ``tools`` (scripts, not a library);
* no import circles between the modules of the four packages.
"""
import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pomp_core", "pomp_det", "pomp_seg", "pomp_world")
CONSUMERS = ("pomp_core.pretrain", "pomp_core.transfer")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, modules: Set[str]) -> Set[str]:
    """Modules a file imports, at any depth (``if TYPE_CHECKING:`` blocks excluded);
    ``from pkg import mod`` counts as importing ``pkg.mod`` when that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: Set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            subs = [f"{target}.{alias.name}" for alias in node.names]
            found = [s for s in subs if s in modules]
            out.update(found)
            if len(found) < len(subs):
                out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return out


def import_graph() -> Dict[str, Set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, modules) for p in files}


GRAPH = import_graph()


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(source: str, forbidden: str, exempt: tuple = ()) -> List[str]:
    return sorted(f"{m} imports {t}" for m, targets in GRAPH.items()
                  if _within(m, source) and not any(_within(m, e) for e in exempt)
                  for t in targets if _within(t, forbidden))


def test_the_graph_sees_known_imports():
    """The parser resolves relative, from-package and local imports (or the contract is vacuous)."""
    assert "pomp_core.text_tower" in GRAPH["pomp_core.prompt"]  # from .text_tower import
    assert "pomp_core.images" in GRAPH["pomp_core.pretrain.data"]  # from ..images import
    assert "pomp_core.clip_loader" in GRAPH["pomp_core.cli"]  # a local import in a function
    assert "pomp_core" in GRAPH["pomp_det.embeddings"]  # import pomp_core
    assert {"pomp_world.generate", "pomp_world.detection"} <= GRAPH["pomp_world"]


@pytest.mark.parametrize("consumer", CONSUMERS)
def test_core_library_layer_never_imports_its_consumers(consumer):
    assert violations("pomp_core", consumer, exempt=CONSUMERS) == []


def test_pretrain_and_transfer_are_independent():
    assert violations("pomp_core.pretrain", "pomp_core.transfer") == []
    assert violations("pomp_core.transfer", "pomp_core.pretrain") == []


@pytest.mark.parametrize("source, forbidden", [
    ("pomp_core", "pomp_det"), ("pomp_core", "pomp_seg"), ("pomp_core", "pomp_world"),
    ("pomp_det", "pomp_seg"), ("pomp_det", "pomp_world"),
    ("pomp_seg", "pomp_det"), ("pomp_seg", "pomp_world"),
])
def test_packages_import_downwards_only(source, forbidden):
    assert violations(source, forbidden) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_the_tools(package):
    assert violations(package, "tools") == [] and violations(package, "train_net") == []


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert cycles(GRAPH) == []
