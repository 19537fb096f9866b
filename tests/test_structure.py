"""The library's shape: imports flow one way (no cycle among rmkit's modules, counting imports inside
functions too, which would otherwise hide one), no function grows past what a reader can hold, and committed
results are standard JSON."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "rmkit"


def _imports(path: Path) -> set[str]:
    """rmkit modules a module imports, anywhere in its body (``from .x import``, ``from rmkit.x import``,
    ``from . import x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names if (PKG / f"{a.name}.py").exists())
            elif node.module and node.module.startswith("rmkit."):
                out.add(node.module.split(".")[1])
    return out - {path.stem, "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_rmkit():
    graph = {p.stem: _imports(p) for p in PKG.glob("*.py")}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_function_over_180_lines():
    long = []
    for p in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 180:
                long.append(f"{p.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_committed_results_are_standard_json():
    """Benchmark results are read by other tools (jq, JavaScript, pandas): an undefined metric is null, never the
    NaN or Infinity token that strict parsers reject."""
    import json

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    results = sorted((PKG.parent / "benchmarks" / "results").glob("*.json"))
    assert results
    for path in results:
        json.loads(path.read_text(), parse_constant=refuse)


def test_committed_results_name_no_machine_paths():
    """A committed result or gold reads the same from any clone: no absolute path of the machine that wrote it
    (benchmarks write with ``write_json(..., relative_to=ROOT)``). Scratch folders under /tmp that a few old
    results name as where a run lived are not paths into a clone, and are let be."""
    import json
    import re

    machine = re.compile(r"(^|,)/(work|home|root|Users|mnt)/")
    found = []

    def walk(obj, where):
        if isinstance(obj, str) and machine.search(obj):
            found.append(f"{where}: {obj[:80]}")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}.{k}")
        elif isinstance(obj, list):
            for v in obj:
                walk(v, where)

    for folder in ("results", "lab"):
        for path in sorted((PKG.parent / "benchmarks" / folder).glob("*.json")):
            walk(json.loads(path.read_text()), path.name)
    assert not found, found[:10]


def test_relative_paths_by_hand(tmp_path):
    from rmkit.files import relative_paths, write_json

    root = tmp_path / "repo"
    obj = {"policy": f"{root}/runs/a/policy", "members": f"{root}/m0,{root}/m1", "other": "/elsewhere/x",
           "list": [f"{root}/b", 3, None], "root_itself": str(root), "beside": f"{tmp_path}/shared/data"}
    assert relative_paths(obj, root) == {"policy": "runs/a/policy", "members": "m0,m1", "other": "/elsewhere/x",
                                         "list": ["b", 3, None], "root_itself": "../repo", "beside": "../shared/data"}
    write_json(tmp_path / "r.json", obj, relative_to=root)
    assert '"runs/a/policy"' in (tmp_path / "r.json").read_text()
