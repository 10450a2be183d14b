"""The house rules, read from the source with ``ast``: layers, no import cycles, module size, the
number of positional parameters, and where the frameworks may be imported.

Every ``import`` counts, also those inside functions (lazy imports are still dependencies); only
imports under ``if TYPE_CHECKING:`` are left out of the cycle check (they never run), though they
must still go the right way between layers.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bioclip", "indexer", "search_ui")

#: No module is longer than this many lines.
MAX_LINES = 500
#: Modules allowed to be longer, each with its reason. Empty: keep it that way.
LONG_MODULES: dict[str, str] = {}

#: No function takes more than this many positional parameters (``self``/``cls`` not counted);
#: group the rest in a small frozen dataclass, or make them keyword-only.
MAX_POSITIONAL = 6

#: Inside ``indexer``, a component may import itself and components of a lower rank only.
RANKS: dict[str, int] = {
    "indexer._version": 0,
    "indexer.errors": 0,
    "indexer.locations": 1,  # every kind of location, parsed and formatted
    "indexer._coexist": 1,  # the check that our ``bioclip`` is the one imported
    "indexer.dwc": 1,  # Darwin Core values in one vocabulary (normalised when written and on read)
    "indexer.store": 2,  # the collection on disk
    "indexer.media": 3,  # one image's bytes and pixels; serving a collection's images
    "indexer.ann": 4,  # FAISS: choice, build, tuning, search
    "indexer.build": 5,  # images -> collection
    "indexer.search": 5,  # query -> results
    "indexer.curate": 6,  # (to come) derived curation data, over search and ann
    "indexer.serve": 6,  # (to come) the HTTP API, over search
    "indexer.cli": 7,  # the console scripts
    "indexer": 8,  # the package itself: lazy re-exports of the public entry points
}
#: Between the three packages: each may import only those listed (and itself).
PACKAGE_DEPS = {"bioclip": set(), "indexer": {"bioclip"}, "search_ui": {"bioclip", "indexer"}}

#: Third-party frameworks and the only modules that may import them.
FRAMEWORKS = {
    "open_clip": ("bioclip.model", "bioclip.loading", "bioclip.testing"),
    "streamlit": ("search_ui.app", "search_ui.ui", "search_ui.session", "search_ui.views."),
    "click": ("indexer.cli.",),
}


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    tree: ast.Module
    imports: list[tuple[str, int, bool]] = field(default_factory=list)  # (imported name, line, type-only)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(mod: Module) -> list[tuple[str, int, bool]]:
    type_only = _type_checking_lines(mod.tree)
    is_package = mod.path.name == "__init__.py"
    out = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, node.lineno in type_only) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.name.split(".") if is_package else mod.name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            out += [(f"{base}.{a.name}", node.lineno, node.lineno in type_only) for a in node.names]
    return out


def _load() -> dict[str, Module]:
    mods = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "sample" in path.relative_to(ROOT).parts:
                continue
            text = path.read_text(encoding="utf-8")
            name = _module_name(path)
            mods[name] = Module(name, path, len(text.splitlines()), ast.parse(text, str(path)))
    for mod in mods.values():
        mod.imports = _imports(mod)
    return mods


MODULES = _load()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (``indexer.store.Writer`` -> ``indexer.store``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges(*, with_type_only: bool) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod in MODULES.values():
        for name, _, type_only in mod.imports:
            target = _resolve(name)
            if target and target != mod.name and (with_type_only or not type_only):
                edges[mod.name].add(target)
    return edges


def _component(module: str) -> str | None:
    best = None
    for comp in RANKS:
        if (module == comp or module.startswith(comp + ".")) and (best is None or len(comp) > len(best)):
            best = comp
    return best


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_rules_see_the_whole_project():
    assert {"indexer.store", "indexer.ann", "indexer.build", "indexer.search", "search_ui.app"} <= set(MODULES)
    assert all(_component(m) is not None for m in MODULES if m.startswith("indexer")), [
        m for m in MODULES if m.startswith("indexer") and _component(m) is None
    ]


def test_no_import_cycles():
    assert _cycles(_edges(with_type_only=False)) == []


def test_imports_go_down_the_layers():
    wrong = []
    for mod in MODULES.values():
        package = mod.name.split(".")[0]
        for name, line, _ in mod.imports:
            target = _resolve(name)
            if target is None:
                continue
            other = target.split(".")[0]
            if other != package and other not in PACKAGE_DEPS[package]:
                wrong.append(f"{mod.name}:{line} imports {target}")
                continue
            if package == other == "indexer":
                src, dst = _component(mod.name), _component(target)
                if src != dst and RANKS[dst] >= RANKS[src]:
                    wrong.append(f"{mod.name}:{line} ({src}, rank {RANKS[src]}) imports {target} (rank {RANKS[dst]})")
    assert wrong == []


def test_modules_stay_small():
    long = {m.name: m.lines for m in MODULES.values() if m.lines > MAX_LINES and m.name not in LONG_MODULES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def _positional(fn: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> int:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if in_class and not static and names and names[0] in ("self", "cls", "mcs"):
        names = names[1:]
    return len(names)


def test_no_function_takes_many_positional_parameters():
    crowded = []
    for mod in MODULES.values():
        for node in ast.walk(mod.tree):
            body = node.body if isinstance(node, ast.ClassDef | ast.Module) else []
            for fn in body:
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = _positional(fn, isinstance(node, ast.ClassDef))
                    if n > MAX_POSITIONAL:
                        crowded.append(f"{mod.name}.{fn.name} ({n})")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for fn in node.body:
                    if (
                        isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                        and _positional(fn, False) > MAX_POSITIONAL
                    ):
                        crowded.append(f"{mod.name}.{node.name}.{fn.name} ({_positional(fn, False)})")
    assert crowded == []


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_frameworks_are_imported_only_where_they_belong(framework):
    allowed = FRAMEWORKS[framework]
    where = sorted(
        f"{mod.name}:{line}"
        for mod in MODULES.values()
        for name, line, _ in mod.imports
        if name.split(".")[0] == framework
        and not any(mod.name == a or (a.endswith(".") and mod.name.startswith(a)) for a in allowed)
    )
    assert where == []


def test_the_app_logic_in_search_ui_runs_without_streamlit():
    """Every search_ui module but the pages is plain Python (tested without a browser)."""
    pages = [
        m
        for m in MODULES
        if m.startswith("search_ui")
        and any(m == a or (a.endswith(".") and m.startswith(a)) for a in FRAMEWORKS["streamlit"])
    ]
    logic = [m for m in MODULES if m.startswith("search_ui") and m not in pages and m != "search_ui"]
    assert pages and logic


def test_the_rule_checker_finds_a_cycle_and_a_wrong_way_import():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert RANKS[_component("indexer.store.writer")] < RANKS[_component("indexer.search.engine")]
