"""Imports point one way: down the layers of docs/architecture.md, with no circle, and never to the CLI.

``LAYERS`` is the one place the layers are written: top to bottom, each a name and the top-level
modules and packages of ``pipeline`` in it (a package brings all its modules). The import graph
is grimp's, which counts every ``import`` statement, those inside functions included
(``test_grimp_counts_imports_inside_functions`` checks that on a package of its own), plus the
lazy attributes of ``pipeline/__init__.py``, which name their modules as strings.

docs/architecture.md lists the same layers in the same order (a test below compares them). The
rules, each a test below naming every import that breaks it, file and line:

* every module of ``pipeline`` sits in a layer (a new top-level module or package is placed here);
* no cycle among modules, in a layer or across layers;
* no import from a lower layer to a higher one (a layer's modules may import each other);
* no module imports ``pipeline.cli`` but ``pipeline.__main__`` (``python -m pipeline``);
* the bench reaches ``train/`` through ``pipeline.train.parts`` only (``SEAMS``).
"""

from __future__ import annotations

import ast
import functools
import textwrap
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pipeline"

# Top to bottom. "pipeline" is the package itself: its lazy attributes (fit, Config, Hook, ...).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry", ("pipeline.__main__",)),
    ("cli", ("pipeline.cli", "pipeline.launch")),
    ("api", ("pipeline", "pipeline.api", "pipeline.predictor", "pipeline.predict", "pipeline.export_model")),
    ("drivers", ("pipeline.sweep", "pipeline.bench")),
    ("train", ("pipeline.train",)),
    ("parts", ("pipeline.data", "pipeline.track", "pipeline.models", "pipeline.objectives", "pipeline.optim")),
    ("mesh", ("pipeline.sharding", "pipeline.distributed", "pipeline.compile_cache")),
    ("config", ("pipeline.config", "pipeline.registry", "pipeline.experiments", "pipeline.hooks")),
    ("base", ("pipeline.errors", "pipeline.signals", "pipeline.durable")),
)
CLI = "pipeline.cli"
CLI_IMPORTERS = frozenset({"pipeline.__main__"})
RULES = ("unplaced", "cycle", "upward", "cli")


@dataclass(frozen=True)
class Import:
    """One import statement: which module imports which, at what line, as written."""

    importer: str
    imported: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{source_file(self.importer)}:{self.line}: {self.text.strip()}  ({self.importer} -> {self.imported})"


def source_file(module: str) -> str:
    """The file of ``module``, relative to the repository (a package's ``__init__.py``)."""
    path = Path(*module.split("."))
    return str(path / "__init__.py") if (ROOT / path).is_dir() else str(path.with_suffix(".py"))


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> int | None:
    """The index of ``module``'s layer (0 is the top), or None when no entry holds it.

    An entry holds itself and, unless it is the root package, every module under it; the longest
    entry that holds a module places it.
    """
    best: tuple[int, int] | None = None  # (length of the entry, layer index)
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            holds = module == entry or ("." in entry and module.startswith(entry + "."))
            if holds and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def edges_of(modules: Iterable[str], imports: Sequence[Import]) -> dict[str, set[str]]:
    """Module -> the modules it imports."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        edges.setdefault(imp.importer, set()).add(imp.imported)
        edges.setdefault(imp.imported, set())
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):  # Tarjan's algorithm, iterative
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
    return sorted(found)


def shortest_loop(component: Sequence[str], edges: dict[str, set[str]]) -> list[str]:
    """The shortest round of imports inside ``component``: modules in order, the first one again implied."""
    inside = set(component)
    best: list[str] | None = None
    for start in sorted(component):
        parents: dict[str, str | None] = {start: None}
        queue, last = deque([start]), None
        while queue and last is None:
            node = queue.popleft()
            for child in sorted(edges[node] & inside):
                if child == start:
                    last = node
                    break
                if child not in parents:
                    parents[child] = node
                    queue.append(child)
        loop = []
        while last is not None:
            loop.append(last)
            last = parents[last]
        loop.reverse()
        if loop and (best is None or len(loop) < len(best)):
            best = loop
    assert best is not None
    return best


def check(modules: Iterable[str], imports: Sequence[Import], layers: Sequence[tuple[str, Sequence[str]]] = LAYERS,
          cli: str = CLI, cli_importers: frozenset[str] = CLI_IMPORTERS) -> dict[str, list[str]]:
    """What breaks each rule (``RULES``): one line per module or import, naming the file and line."""
    modules = sorted(set(modules))
    names = [name for name, _ in layers]
    problems: dict[str, list[str]] = {rule: [] for rule in RULES}
    for module in modules:
        if layer_of(module, layers) is None:
            problems["unplaced"].append(f"{source_file(module)}: {module} is in no layer; add it to LAYERS in "
                                        "tests/test_layers.py and to docs/architecture.md")
    edges = edges_of(modules, imports)
    for component in cycles(edges):
        loop = shortest_loop(component, edges)
        hops = list(zip(loop, loop[1:] + loop[:1]))
        lines = "\n    ".join(str(i) for hop in hops for i in imports if (i.importer, i.imported) == hop)
        tangle = f" (one loop among {len(component)} modules: {', '.join(component)})" if component[len(loop):] else ""
        problems["cycle"].append(f"cycle {' -> '.join(loop + loop[:1])}{tangle}:\n    {lines}")
    for imp in imports:
        if imp.imported == cli and imp.importer not in cli_importers:
            problems["cli"].append(f"{imp}: only {', '.join(sorted(cli_importers))} imports the CLI")
        low, high = layer_of(imp.importer, layers), layer_of(imp.imported, layers)
        if low is not None and high is not None and high < low:
            problems["upward"].append(f"{imp}: layer '{names[low]}' imports layer '{names[high]}' above it")
    return problems


def lazy_attributes(package: str = PACKAGE) -> list[Import]:
    """The modules ``pipeline/__init__.py`` loads on first use, by the strings of its ``_EXPORTS``."""
    path = ROOT / source_file(package)
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        mapping = getattr(node, "value", None)
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets) and isinstance(mapping, ast.Dict):
            for key, value in zip(mapping.keys, mapping.values):
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    name = key.value if isinstance(key, ast.Constant) else "?"
                    out.append(Import(package, value.value, value.lineno, f"_EXPORTS[{name!r}] = {value.value!r}"))
    return out


@functools.cache
def pipeline_graph() -> tuple[tuple[str, ...], tuple[Import, ...]]:
    """Every module of ``pipeline`` and every import among them (grimp's, plus the lazy attributes)."""
    graph = grimp.build_graph(PACKAGE, include_external_packages=False, cache_dir=None)
    imports = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                imports.append(Import(importer, imported, detail["line_number"], detail["line_contents"]))
    imports += lazy_attributes()
    return tuple(sorted(graph.modules)), tuple(sorted(imports, key=lambda i: (i.importer, i.line, i.imported)))


@pytest.mark.parametrize("rule", RULES)
def test_pipeline_imports_point_one_way(rule):
    modules, imports = pipeline_graph()
    assert len(modules) > 50 and any(i.importer == "pipeline.cli" for i in imports)  # the graph is the package's
    found = check(modules, imports)[rule]
    assert not found, f"{len(found)} ({rule}):\n" + "\n".join(found)


# The bench times the training session's parts one by one; it reaches them through one module, so
# the rest of train/ can change shape without breaking it.
SEAMS = {"pipeline.bench": "pipeline.train.parts"}


def test_the_bench_reaches_train_through_its_parts_module():
    _, imports = pipeline_graph()
    for outside, seam in SEAMS.items():
        package = seam.rsplit(".", 1)[0]
        reached = [str(i) for i in imports if i.importer.startswith(outside + ".")
                   and (i.imported == package or i.imported.startswith(package + ".")) and i.imported != seam]
        assert not reached, f"{outside} imports {package} other than through {seam}:\n" + "\n".join(reached)


def doc_path(entry: str) -> str:
    """How docs/architecture.md names an entry: ``pipeline/cli.py``, ``pipeline/sweep/``, ``pipeline/__init__.py``."""
    if entry == PACKAGE:
        return f"{PACKAGE}/__init__.py"
    path = Path(*entry.split("."))
    return f"{path}.py" if (ROOT / path).with_suffix(".py").is_file() else f"{path}/"


def test_the_architecture_page_lists_the_same_layers():
    rows = [line for line in (ROOT / "docs" / "architecture.md").read_text().splitlines() if line.startswith("| `")]
    listed = [(cells[1].strip("` "), sorted(p for p in cells[2].split("`")[1::2] if p.startswith(f"{PACKAGE}/")))
              for cells in (row.split("|") for row in rows)]
    assert listed == [(name, sorted(doc_path(e) for e in entries)) for name, entries in LAYERS]


def test_check_names_each_broken_rule_with_its_line():
    layers = (("top", ("p.cli", "p.__main__")), ("mid", ("p.mid",)), ("low", ("p.low", "p.other")))
    modules = ["p.cli", "p.__main__", "p.mid", "p.mid.a", "p.mid.b", "p.low", "p.other", "p.stray"]
    imports = [
        Import("p.__main__", "p.cli", 3, "from p.cli import main"),  # allowed
        Import("p.mid.a", "p.other", 5, "from p import other"),  # down: allowed
        Import("p.low", "p.other", 6, "from p import other"),  # same layer, no cycle: allowed
        Import("p.mid.a", "p.mid.b", 7, "from p.mid import b"),
        Import("p.mid.b", "p.mid.a", 9, "from p.mid import a"),  # a cycle inside one layer
        Import("p.low", "p.mid.a", 11, "from p.mid import a"),  # up
        Import("p.mid.b", "p.cli", 13, "from p.cli import main"),  # the CLI
    ]
    found = check(modules, imports, layers, "p.cli", frozenset({"p.__main__"}))
    assert [line.split(":")[0] for line in found["unplaced"]] == ["p/stray.py"]
    assert len(found["cycle"]) == 1 and found["cycle"][0].startswith("cycle p.mid.a -> p.mid.b -> p.mid.a:")
    assert "p/mid/a.py:7: from p.mid import b" in found["cycle"][0]
    assert "p/mid/b.py:9: from p.mid import a" in found["cycle"][0]
    assert found["upward"] == ["p/low.py:11: from p.mid import a  (p.low -> p.mid.a): layer 'low' imports layer "
                               "'mid' above it",
                               "p/mid/b.py:13: from p.cli import main  (p.mid.b -> p.cli): layer 'mid' imports layer "
                               "'top' above it"]
    assert len(found["cli"]) == 1 and found["cli"][0].startswith("p/mid/b.py:13: from p.cli import main")
    assert not any(check(modules[:-1], imports[:4], layers, "p.cli", frozenset({"p.__main__"})).values())


def test_a_cycle_is_named_by_its_shortest_loop():
    layers = (("all", ("q",)),)
    imports = [Import("q.x", "q.y", 1, "import q.y"), Import("q.y", "q.z", 2, "import q.z"),
               Import("q.z", "q.x", 3, "import q.x"), Import("q.y", "q.x", 4, "import q.x"),
               Import("q.w", "q.w", 5, "import q.w")]
    found = check(["q.w", "q.x", "q.y", "q.z"], imports, layers)["cycle"]
    assert [line.splitlines()[0] for line in found] == [
        "cycle q.w -> q.w:",
        "cycle q.x -> q.y -> q.x (one loop among 3 modules: q.x, q.y, q.z):",
    ]
    assert found[1].splitlines()[1:] == ["    q/x.py:1: import q.y  (q.x -> q.y)",
                                         "    q/y.py:4: import q.x  (q.y -> q.x)"]


def test_layer_of_takes_the_longest_entry_and_keeps_the_root_to_itself():
    layers = (("api", ("pipeline",)), ("parts", ("pipeline.data",)), ("base", ("pipeline.data.fs",)))
    assert layer_of("pipeline", layers) == 0
    assert layer_of("pipeline.data.store", layers) == 1
    assert layer_of("pipeline.data.fs", layers) == 2
    assert layer_of("pipeline.other", layers) is None


def test_grimp_counts_imports_inside_functions(tmp_path, monkeypatch):
    package = tmp_path / "layers_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("")
    (package / "high.py").write_text(textwrap.dedent("""\
        def late():
            from layers_probe import low

            return low
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("layers_probe", include_external_packages=False, cache_dir=None)
    details = graph.get_import_details(importer="layers_probe.high", imported="layers_probe.low")
    assert [d["line_number"] for d in details] == [2]
