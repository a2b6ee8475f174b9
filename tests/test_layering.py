"""The layout is the architecture: which package may import which (docs/architecture.md),
no import cycles between modules, and the light commands import no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quantkit"

# Bottom to top: a package may import anything in a lower layer, nothing in its own layer
# or above (docs/architecture.md).
LAYERS: list[set[str]] = [
    {"errors", "version"},
    {"disk"},
    {"formats", "runtime"},
    {"source"},
    {"artifact"},
    {"planning", "calibration"},
    {"inspection", "evaluation"},
    {"backends"},
    {"hub", "demo"},
    {"pipeline"},
    {"cli"},
    {"__init__", "__main__"},
]
TOP_LEVEL_MODULES = {"__init__", "__main__", "errors", "pipeline", "version"}
HEAVY = ("torch", "transformers", "llama_cpp", "gguf", "llmcompressor")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every quantkit module `path` imports, at module level or inside functions.
    `from pkg import sub` depends on the module pkg.sub, not on pkg's own body."""
    current = _module_name(path)
    package = current.split(".") if path.name == "__init__.py" else current.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name == "quantkit" or name.startswith("quantkit.")}


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(stage: str) -> int:
    for index, layer in enumerate(LAYERS):
        if stage in layer:
            return index
    raise AssertionError(f"quantkit.{stage} is in no layer: add it to LAYERS and the docs")


def test_top_level_holds_only_the_entry_modules() -> None:
    loose = {p.stem for p in PACKAGE.glob("*.py")} - TOP_LEVEL_MODULES
    assert not loose, f"modules outside a stage package: {sorted(loose)}"


def test_every_package_says_what_its_stage_does() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"{init} has no docstring saying what the stage does"


def test_dependencies_point_down() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        here = _stage(name)
        for target in _imports(path, set(modules)):
            there = _stage(target)
            if there == here or target == "quantkit":
                continue
            if _layer(there) >= _layer(here):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        graph[name] = {t for t in _imports(path, set(modules)) if t in modules and t != name}
    cycles = _find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_layering_test_sees_a_violation(tmp_path: Path) -> None:
    """The check above can fail: a lower stage importing a higher one is reported."""
    fake = tmp_path / "quantkit" / "formats"
    fake.mkdir(parents=True)
    module = fake / "x.py"
    module.write_text("from ..pipeline import convert\n", encoding="utf-8")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "quantkit"
    try:
        imports = _imports(module, {"quantkit.pipeline", "quantkit.formats.x"})
    finally:
        PACKAGE = saved
    assert imports == {"quantkit.pipeline"}
    assert _layer(_stage("quantkit.pipeline")) > _layer(_stage("quantkit.formats.x"))
    assert _find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize(
    "code",
    [
        "import quantkit.cli",
        "import quantkit.cli.plan_cmd, quantkit.cli.profiles_cmd, quantkit.planning.planner",
        "import quantkit; quantkit.plan; quantkit.convert; quantkit.evaluate",
    ],
)
def test_light_commands_import_no_heavy_library(code: str) -> None:
    probe = f"import sys; {code}; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_help_and_plan_run_without_heavy_libraries(demo_model: Path) -> None:
    """`quantkit --help` and `quantkit plan` as a user runs them, with the heavy libraries
    made unimportable: they must not need them."""
    blocker = (
        "import sys, runpy\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "sys.argv = ['quantkit'] + sys.argv[1:]\n"
        "runpy.run_module('quantkit', run_name='__main__')\n"
    )
    for args in (["--help"], ["plan", str(demo_model), "--profile", "rtx4090-4bit", "--json"]):
        out = subprocess.run(
            [sys.executable, "-c", blocker, *args], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stdout + out.stderr
