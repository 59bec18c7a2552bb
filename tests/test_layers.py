"""One-way layers (issue 21): every module of the package imports only its own stage and lower ranks.

The table lives here, not in the package: only this test reads it, and ARCHITECTURE.md points at it.
"""

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_gradprune"
TOP = ""  # the package's __init__, __main__ and _moved: they may import anything

# lowest first; a stage (a top-level module or subpackage) may import its own modules and lower ranks only.
# Stages of one rank do not import each other (oneshot and folders both build on surgery, side by side).
LAYERS = [
    # _moved (the flat layout's old paths) imports no module of the package but by name, when a user asks for an
    # old path; at the bottom, cli's old names can use its warning
    {"units", "modeling_gradprune", "_moved"},
    {"architectures"},
    {"state", "testing", "dispatch"},  # dispatch: which Accelerate-dispatched models a cut can reach
    {"scoring"},
    {"planning", "sparsity"},  # sparsity: weight masks, beside the unit plans
    {"surgery"},
    {"oneshot", "folders"},
    {"deploy"},
    {"reports"},
    {"training"},
    {"cli"},
    {TOP, "__main__"},  # the top imports anything, each other included
]
RANK = {stage: rank for rank, stages in enumerate(LAYERS) for stage in stages}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``planning.plan`` for ``planning/plan.py``, ``planning`` for its ``__init__``, ``""`` for the package's."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    return module.split(".")[0]


def label(stage: str) -> str:
    return stage or "hf_gradprune"


def imports_of(module: str, source: str, is_package: bool, modules: set[str]) -> set[tuple[str, str]]:
    """``{(imported module, name)}`` within the package for one module's source: relative and absolute
    imports, lazy ones in functions and ``TYPE_CHECKING`` blocks included. ``from . import x`` of a submodule
    ``x`` is an import of that module; ``name`` is ``""`` for a plain ``import hf_gradprune.x``."""
    here = module.split(".") if module else []
    package = here if is_package else here[:-1]  # what ``from . import`` starts from
    found = set()

    def add(target: str, name: str) -> None:
        sub = f"{target}.{name}" if target else name
        found.add((sub, "") if sub in modules else (target, name))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module == "hf_gradprune" or (node.module or "").startswith("hf_gradprune."):
                target = node.module.removeprefix("hf_gradprune").lstrip(".")
            else:
                continue
            for alias in node.names:
                add(target, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "hf_gradprune" or alias.name.startswith("hf_gradprune."):
                    found.add((alias.name.removeprefix("hf_gradprune").lstrip("."), ""))
    return found


def package_imports(root: Path = PACKAGE) -> dict[str, set[tuple[str, str]]]:
    """``{module: {(imported module, name)}}`` for every module under ``root``."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    return {m: imports_of(m, p.read_text(), p.name == "__init__.py", set(paths)) for m, p in sorted(paths.items())}


def layer_violations(imports: dict[str, set[tuple[str, str]]]) -> list[str]:
    """Each import of a higher rank, of a stage of the same rank, or of a private name (or module) of
    another stage, as ``"module imports target.name: why"``; a module in no layer is one too."""
    found = []
    for module, edges in sorted(imports.items()):
        own = stage(module)
        if own not in RANK:
            found.append(f"{module or 'hf_gradprune'} is in no layer: add its stage to LAYERS")
            continue
        for target, name in sorted(edges):
            other = stage(target)
            what = f"{module or 'hf_gradprune'} imports {'.'.join(filter(None, ['hf_gradprune', target, name]))}"
            if other == own:
                continue
            if other not in RANK:
                found.append(f"{what}: {other} is in no layer")
            elif RANK[other] > RANK[own]:
                found.append(f"{what}: {label(other)} (rank {RANK[other]}) is above {label(own)} (rank {RANK[own]})")
            elif RANK[other] == RANK[own] < len(LAYERS) - 1:
                found.append(f"{what}: {other} and {own} share rank {RANK[own]} and do not import each other")
            elif any(part.startswith("_") and not part.endswith("__") for part in [*target.split(".")[1:], name]):
                found.append(f"{what}: a private name of another stage")
    return found


def test_every_import_goes_down_the_layers():
    imports = package_imports()
    assert imports  # the walk found the package
    assert layer_violations(imports) == []


def test_every_stage_is_in_the_table_and_the_table_names_no_stage_twice_or_that_is_gone():
    stages = {stage(m) for m in package_imports()}
    assert sum(len(s) for s in LAYERS) == len(RANK)  # each stage has one rank
    assert set(RANK) == stages, (sorted(stages - set(RANK)), sorted(set(RANK) - stages))


# The modules that read or write saved folders (from tests/test_checkpoint.py's first cycle test): stricter, they
# import no private name of any other module, of their own stage either.
FOLDER_MODULES = {"folders.hub", "folders.v4_compat", "folders.checkpoint", "cli.convert_v4", "modeling_gradprune"}


def cycles(imports: dict[str, set[tuple[str, str]]]) -> list[str]:
    """The modules that import themselves through others (lazy imports count: each hides a dependency)."""
    graph = {m: {t for t, _ in edges if t in imports and t != m} for m, edges in imports.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    return [m for m in sorted(graph) if reaches(m, m)]


def test_no_module_imports_itself_through_others_and_folder_modules_share_public_names_only():
    imports = package_imports()
    assert cycles(imports) == []
    assert FOLDER_MODULES <= set(imports)
    private = [
        f"{module} imports {target}.{name}"
        for module in sorted(FOLDER_MODULES)
        for target, name in imports[module]
        if target != module and name.startswith("_") and not name.endswith("__")
    ]
    assert private == []


def test_a_planted_cycle_is_found():
    imports = {"a": {("b", "f")}, "b": {("c", "")}, "c": {("a", "g")}, "d": {("a", "f")}}
    assert cycles(imports) == ["a", "b", "c"]
    imports["c"] = set()
    assert cycles(imports) == []


def fake_package(tmp_path, files: dict[str, str]) -> Path:
    root = tmp_path / "hf_gradprune"
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


PLANTED = {
    "__init__.py": "from .cli.main import main\n",
    "units.py": "",
    "cli/__init__.py": "",
    "cli/main.py": "from ..planning.plan import PruningPlan\n",
    "planning/__init__.py": "",
    "planning/plan.py": "from .. import units\n",
    "oneshot/__init__.py": "",
    "folders/__init__.py": "",
}


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        # upward, written each way an import can be written
        ("planning/plan.py", "def f():\n    from ..cli.main import main\n", "imports hf_gradprune.cli.main.main"),
        ("planning/plan.py", "from ..cli import main\n", "imports hf_gradprune.cli.main: cli (rank 10) is above"),
        ("planning/plan.py", "import hf_gradprune.cli.main\n", "imports hf_gradprune.cli.main: cli (rank 10)"),
        ("planning/plan.py", "from hf_gradprune.cli.main import x\n", "cli (rank 10) is above planning (rank 4)"),
        ("planning/plan.py", "if 0:\n    from hf_gradprune import cli\n", "imports hf_gradprune.cli: cli"),
        ("units.py", "from . import __version__\n", "hf_gradprune.__version__: hf_gradprune (rank 11)"),
        ("units.py", "import hf_gradprune\n", "units imports hf_gradprune: hf_gradprune (rank 11)"),
        ("planning/__init__.py", "from .. import cli\n", "planning imports hf_gradprune.cli: cli (rank 10)"),
        # sideways, private, unplaced
        ("oneshot/__init__.py", "from ..folders import x\n", "folders and oneshot share rank 6"),
        ("cli/main.py", "from ..planning.plan import _shape\n", "plan._shape: a private name of another stage"),
        ("cli/main.py", "from ..planning._budgets import x\n", "a private name of another stage"),
        ("pruning/__init__.py", "", "pruning is in no layer"),
    ],
)
def test_the_checker_finds_a_planted_import(tmp_path, module, source, expected):
    root = fake_package(tmp_path, PLANTED)
    assert layer_violations(package_imports(root)) == []  # the clean fake: what is planted below is the only fault
    root = fake_package(tmp_path, {**PLANTED, module: source + PLANTED.get(module, "")})
    found = layer_violations(package_imports(root))
    assert len(found) == 1 and expected in found[0], found


def test_imports_are_read_as_the_interpreter_resolves_them():
    modules = {"", "units", "planning", "planning.plan", "planning.shapes", "cli", "cli.main"}
    source = "from . import shapes\nfrom .shapes import f\nfrom .. import units\nfrom ..cli.main import g\n"
    got = imports_of("planning.plan", source, False, modules)
    assert got == {("planning.shapes", ""), ("planning.shapes", "f"), ("units", ""), ("cli.main", "g")}
    # in an __init__, ``.`` is the package itself
    assert imports_of("planning", "from .plan import P\nfrom . import plan\n", True, modules) == {
        ("planning.plan", "P"),
        ("planning.plan", ""),
    }


def test_an_upward_import_planted_in_a_copy_of_the_package_fails_it(tmp_path):
    root = tmp_path / "hf_gradprune"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    scorer = root / "scoring" / "scorer.py"
    scorer.write_text(scorer.read_text() + "\n\ndef _report():\n    from ..reports import run_report\n")
    assert layer_violations(package_imports(root)) == [
        "scoring.scorer imports hf_gradprune.reports.run_report: reports (rank 8) is above scoring (rank 3)"
    ]


def test_a_module_over_600_lines_says_in_its_docstring_why_it_is_one():
    """Issue 21: no module is over about 600 lines unless it says why ("One module ... because ...")."""
    long = {
        m: p for m, p in ((module_name(p), p) for p in PACKAGE.rglob("*.py")) if len(p.read_text().splitlines()) > 600
    }
    silent = [
        m for m, p in sorted(long.items()) if "One module" not in (ast.get_docstring(ast.parse(p.read_text())) or "")
    ]
    assert silent == []
