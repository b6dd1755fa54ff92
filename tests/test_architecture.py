"""The house rules of docs/architecture.md, checked on the source: jetjax's modules import each other only
downward (no cycle, every jetjax import at the top of its module), configs/ imports none of them, the run's
functions stay short, and every file a docstring points to is in the repository."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jetjax"


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def jetjax_imports(path, known):
    """(imported jetjax module, whether the import is at the module's top level) for each import in `path`."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found += [(name, id(node) in top) for name in names if name.split(".")[0] == "jetjax"]
    return found


def import_graph():
    """{module: {modules it imports}} over jetjax, and the imports found inside functions or classes."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph, nested = {}, []
    for name, path in paths.items():
        imports = jetjax_imports(path, paths)
        graph[name] = {m for m, _ in imports if m in paths and m != name}
        nested += [(name, m) for m, at_top in imports if not at_top]
    return graph, nested


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle_and_every_jetjax_import_is_at_the_top():
    graph, nested = import_graph()
    assert len(graph) > 40 and "jetjax.train" in graph["jetjax.main"]  # the graph is really read
    assert cycles(graph) == []
    assert nested == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_configs_import_no_engine_module():
    for path in (ROOT / "configs").glob("*.py"):
        assert [m for m, _ in jetjax_imports(path, {})] == [], path.name


def test_the_run_is_made_of_short_functions():
    for name in ("train.py", "steps.py", "build.py", "evaluation.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 40, f"{name}: {node.name} has {node.end_lineno - node.lineno + 1} lines"


def test_docstrings_point_inside_the_repository():
    cited = set()
    for path in list(PACKAGE.rglob("*.py")) + list((ROOT / "configs").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"PART_SPEC|API_NOTES|GPU_NOTES|\.\./shared", text), path
        cited |= set(re.findall(r"\b((?:docs|jetjax|configs|experiments)/[\w/]+\.(?:md|py))", text))
    assert "docs/formulas.md" in cited and "docs/jax_notes.md" in cited
    assert [c for c in sorted(cited) if not (ROOT / c).exists()] == []


def test_formula_sections_cited_exist():
    headings = set(re.findall(r"^#+ (\d+(?:\.\d+)?)\b", (ROOT / "docs" / "formulas.md").read_text(), re.M))
    cited = set()
    for path in PACKAGE.rglob("*.py"):
        for reference in re.findall(r"docs/formulas\.md((?: ?§\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?,?)+)", path.read_text()):
            cited |= set(re.findall(r"§(\d+(?:\.\d+)?)", reference))
    assert cited and sorted(cited - headings) == []
