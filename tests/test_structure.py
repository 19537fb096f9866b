"""The library's shape: imports flow one way (no cycle among rmkit's modules, counting imports inside
functions too, which would otherwise hide one), no function grows past what a reader can hold, and committed
results are standard JSON."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "rmkit"


def _name(path: Path) -> str:
    """A module's dotted name inside rmkit: ``data``, ``lab.labels``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """rmkit modules a module imports, anywhere in its body (``from .x import``, ``from ..x import``, ``from rmkit.x
    import``, ``from . import x``), as dotted names of modules that exist (a package stands for its ``__init__``)."""
    me = _name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    modules = {_name(p) for p in PKG.rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            targets = [".".join(base + node.module.split("."))] if node.module else \
                [".".join(base + [a.name]) for a in node.names]
        elif node.module and node.module.startswith("rmkit."):
            targets = [node.module[len("rmkit."):]]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # from .lab.hh import X names module lab.hh; from .lab import X, lab
                t = t.rpartition(".")[0]
            if t:
                out.add(t)
    return out - {me}


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
    graph = {_name(p): _imports(p) for p in PKG.rglob("*.py")}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_function_over_180_lines():
    long = []
    for p in PKG.rglob("*.py"):
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

    results = sorted((PKG.parent / "benchmarks" / "results").rglob("*.json"))
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


BENCH = PKG.parent / "benchmarks"


def test_the_suite_has_an_index_and_its_scripts_import_only_rmkit():
    """Issue 45: benchmarks/INDEX.md lists every script; no benchmark imports another (a helper two scripts share
    belongs in the library), and no benchmark reaches into the tests."""
    scripts = sorted(p.name for p in BENCH.glob("*.py"))
    index = (BENCH / "INDEX.md").read_text()
    assert not [s for s in scripts if f"`{s}" not in index], [s for s in scripts if f"`{s}" not in index]
    names = {p.stem for p in BENCH.glob("*.py")}
    for p in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            bad = [m for m in mods if m.split(".")[0] in names]
            assert not bad, f"{p.name} imports {bad}"


def test_every_result_says_where_it_came_from():
    """Issue 45: every result JSON carries provenance.argv and provenance.commit (`rmkit.provenance.write_result`;
    results older than it carry a backfilled one)."""
    import json

    missing = []
    for path in sorted((BENCH / "results").rglob("*.json")):
        prov = json.loads(path.read_text()).get("provenance") or {}
        if not prov.get("argv") or "commit" not in prov:
            missing.append(path.name)
    assert not missing, missing


def test_benchmarks_write_results_through_the_provenance_writer():
    """Issue 45: a result written with plain `write_json` or `json.dumps` carries no provenance, and the test above
    only finds out after someone reruns the script and commits. Plain writers are for artifacts (a gold's info
    under benchmarks/lab/, caches under runs/, fuzz.py's malformed input files), named here by the path's text."""
    allowed = ("stem.with_suffix", "runs_path", "path.with_suffix", "timing", "kept", "config.json",
               "cached.with_suffix", "fuzz.py path")
    bad = []
    for p in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            target = ast.unparse(f.value) if name == "write_text" and isinstance(f, ast.Attribute) else \
                ast.unparse(node.args[0])
            text = ast.unparse(node.args[0])  # JSONL (one record a line) is data, not a result
            writes_json = name == "write_json" or (name == "write_text" and "json.dumps" in text
                                                   and not text.startswith("''.join"))
            if writes_json and not any(a in f"{p.name} {target}" for a in allowed):
                bad.append(f"{p.name}:{node.lineno} {target}")
    assert not bad, bad


def test_no_config_default_points_outside_the_repository():
    """Issue 45: a default like ../shared/data/hh-rlhf works only beside this project's clone; data is given."""
    import dataclasses
    import importlib

    bad = []
    for p in sorted((PKG / "configs").glob("*.py")) + [PKG / "data" / "source.py", PKG / "denoise.py", PKG / "judge.py"]:
        mod = importlib.import_module("rmkit." + _name(p))
        for cls in vars(mod).values():
            if dataclasses.is_dataclass(cls) and isinstance(cls, type):
                for f in dataclasses.fields(cls):
                    if isinstance(f.default, str) and ("../" in f.default or f.default.startswith("/")):
                        bad.append(f"{cls.__name__}.{f.name} = {f.default}")
    assert not bad, bad


def test_help_imports_neither_torch_nor_transformers():
    """Issues 45 and 46: `rmkit <cmd> --help` took 2-20 s importing torch for the settings; the settings live in
    rmkit.configs, so help and a mistyped flag need neither (measured: 1.2 s -> 0.15 s)."""
    import subprocess
    import sys

    from rmkit.cli import COMMANDS

    code = ("import sys, contextlib, io\nfrom rmkit.cli import main\nfor name in sys.argv[1:]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n        try:\n            main([name, '--help'])\n"
            "        except SystemExit:\n            pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *COMMANDS], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_the_readme_pitches_before_it_explains():
    """Issue 45: the README's first paragraph is a pitch of at most 60 words, its first code example at most 8 lines,
    and its first two commands set up and audit, then run the tests."""
    import re

    text = (PKG.parent / "README.md").read_text()
    first = text.split("\n\n")[1]
    assert not first.startswith(("```", "#")) and len(first.split()) <= 60, first
    blocks = re.findall(r"```\w*\n(.*?)```", text, re.S)
    assert len(blocks[0].strip().splitlines()) <= 8
    assert "rmkit audit" in blocks[0] and "scripts/setup.sh" in blocks[0] and "pytest" in blocks[1]
