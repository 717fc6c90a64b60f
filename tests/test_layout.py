"""The package layout (docs/architecture.md): imports go one way between concerns, no cycles, short
modules and functions, and the command table names every verb."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vitreduce"
LEAVES = ("errors", "files", "console", "device", "numbers", "config_tree", "version", "locks", "lazy")
# A module may import from its own concern, from any lower layer, and from the leaf modules.
LAYERS = {"leaf": 0, "statistics": 1, "reduction": 1, "data": 1, "train": 2, "efficiency": 2, "sharpness": 2,
          "probe": 2, "report": 3, "study": 4, "cli": 5}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    return {".".join(("vitreduce", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in SRC.rglob("*.py")}


def _concern(module: str) -> str | None:
    """'vitreduce.train.loop' -> 'train'; a leaf module -> 'leaf'; the package root and __main__ -> None."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return None
    return "leaf" if parts[1] in LEAVES else parts[1]


def _imports(path: Path) -> set[str]:
    """Every vitreduce module this file imports, at the top or inside functions (lazy imports too)."""
    modules = _modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vitreduce"):
            for alias in node.names:  # `from pkg import module` imports the module, not pkg's __init__
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vitreduce"))
    return found & set(modules)


def test_every_concern_is_known():
    assert {c for c in map(_concern, _modules()) if c} <= set(LAYERS)


def test_imports_go_one_way():
    wrong = []
    for module, path in _modules().items():
        here = _concern(module)
        if here is None:
            continue
        for target in _imports(path):
            there = _concern(target)
            if there is None:
                wrong.append(f"{module} imports the package root ({target})")
            elif there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = {m: {t for t in _imports(p) if t != m} for m, p in _modules().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("kind", ["module", "function"])
def test_modules_and_functions_stay_short(kind):
    long = []
    for module, path in _modules().items():
        text = path.read_text()
        if kind == "module" and len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{module}: {len(text.splitlines())} lines")
        if kind == "function":
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        long.append(f"{module}.{node.name}: {length} lines")
    assert not long, "\n".join(long)


def test_the_verb_table_is_complete():
    from vitreduce.cli.main import VERBS, build_parser

    verbs = {"inspect", "reduce", "compress", "train", "eval", "data", "study", "report", "demo", "profile",
             "sharpness", "landscape", "probe"}
    assert set(VERBS) == verbs
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "verb").choices
    assert set(choices) == verbs
    on_disk = {p.stem for p in (SRC / "cli").glob("*_cmd.py")}
    assert set(VERBS.values()) == on_disk


def test_make_test_runs_stored_number_tests_under_every_lower_cpu_capability():
    from cpu_capabilities import lower_capabilities

    assert lower_capabilities("AVX512") == ["default", "avx2"] and lower_capabilities("AVX2") == ["default"]
    assert lower_capabilities("DEFAULT") == [] and lower_capabilities("SVE256") == ["default"]
