"""Nothing breaks for users (issue 21): the flat layout's module paths, the package's names and the commands."""

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import hf_gradprune
from hf_gradprune._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def fresh_import(name: str):
    """Import ``name`` anew (an alias runs, and warns, once per process otherwise), recording the warnings."""
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, [w for w in caught if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_and_gives_the_new_objects(old):
    new = MOVED[old]
    new = [new] if isinstance(new, str) else list(new)
    module, caught = fresh_import(f"hf_gradprune.{old}")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"hf_gradprune.{old} moved to ")
    assert all(f"hf_gradprune.{name}" in message for name in new)
    assert caught[0].filename == __file__  # it points at the user's import, not at the import system
    if len(new) == 1:  # the new module itself: patching a name through the old path patches the code
        assert module is importlib.import_module(f"hf_gradprune.{new[0]}")
        return
    seen = set()
    for name in new:
        real = importlib.import_module(f"hf_gradprune.{name}")
        public = getattr(real, "__all__", [k for k in vars(real) if not k.startswith("_")])
        assert public
        for key in public:
            if key not in seen:  # a name of two new modules is the first one's
                assert getattr(module, key) is getattr(real, key), (old, name, key)
                seen.add(key)
    assert set(module.__all__) == seen


def test_an_old_path_does_not_hide_the_package_name_it_shares():
    """``hf_gradprune.reconstruct`` was a module and is a function of the package: importing the old module path
    leaves the function in place (the import system sets a loaded submodule on its package)."""
    from hf_gradprune.oneshot.reconstruct import reconstruct

    module, caught = fresh_import("hf_gradprune.reconstruct")
    assert len(caught) == 1 and module.reconstruct is reconstruct
    assert hf_gradprune.reconstruct is reconstruct
    assert sys.modules["hf_gradprune.reconstruct"] is module is sys.modules["hf_gradprune.oneshot.reconstruct"]
    hf_gradprune.plots_for_this_test = 1  # other attributes still set
    assert hf_gradprune.plots_for_this_test == 1
    del hf_gradprune.plots_for_this_test


def test_an_old_path_that_never_existed_is_not_invented():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("hf_gradprune.no_such_module")


def test_the_old_command_line_module_keeps_its_public_names():
    """``hf_gradprune.command_line`` was one module; its public functions are now in several."""
    module, _ = fresh_import("hf_gradprune.command_line")
    from hf_gradprune.cli import info, inputs, main, prune

    for name, home in [
        ("main", main),
        ("build_parser", main),
        ("prune_arguments", prune),
        ("oneshot_options", prune),
        ("PruneArguments", prune),
        ("folder_info", info),
        ("format_info", info),
        ("original_config", info),
        ("model_folder", inputs),
        ("CommandError", inputs),
        ("OneLineErrorParser", inputs),
        ("PROG", inputs),
    ]:
        assert getattr(module, name) is getattr(home, name), name


def test_every_name_of_the_package_imports_from_it():
    assert len(hf_gradprune.__all__) == len(set(hf_gradprune.__all__)) > 40
    for name in hf_gradprune.__all__:
        assert getattr(hf_gradprune, name) is not None, name
    namespace = {}
    exec("from hf_gradprune import *", namespace)
    assert set(hf_gradprune.__all__) <= set(namespace)


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("NONE_WORDS", "cli.runs"),
        ("ModelArguments", "cli.runs"),
        ("RunArguments", "cli.runs"),
        ("finetune_dense", "cli.runs"),
        ("parse_args", "cli.runs"),
        ("prune_and_report", "cli.runs"),
        ("read_recipe", "cli.runs"),
    ],
)
def test_the_old_cli_module_names_forward_to_cli_runs(name, home):
    import hf_gradprune.cli as cli

    real = importlib.import_module(f"hf_gradprune.{home}")
    with pytest.warns(FutureWarning, match=f"hf_gradprune.cli.{name} moved to hf_gradprune.{home}.{name}") as caught:
        got = getattr(cli, name)
    assert got is getattr(real, name)
    assert caught[0].filename == __file__


def test_cli_invents_no_other_name_and_its_submodules_still_import():
    import hf_gradprune.cli as cli

    with pytest.raises(AttributeError, match="no_such_name"):
        cli.no_such_name  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a submodule is not mistaken for an old name
        from hf_gradprune.cli import data, info, main, runs  # noqa: F401


@pytest.mark.parametrize(
    ("names", "module"),
    [
        (("ImportanceScorer", "Scores", "ScoresError", "METHODS", "GRADIENT_METHODS"), "hf_gradprune.scoring"),
        (("prune_oneshot", "OneShotReport", "reconstruct", "CalibrationError"), "hf_gradprune.oneshot"),
    ],
)
def test_old_modules_that_are_packages_now_keep_their_names_without_a_warning(names, module):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        package = importlib.import_module(module)
    for name in names:
        assert getattr(package, name) is getattr(hf_gradprune, name)


def run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "error::FutureWarning"}  # the commands use no old path
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ([sys.executable, "-m", "hf_gradprune", "--help"], "usage: hf-gradprune [-h] [--version] <command>"),
        ([str(BIN / "hf-gradprune"), "--help"], "usage: hf-gradprune [-h] [--version] <command>"),
        ([str(BIN / "hf-gradprune-convert-v4"), "--help"], "usage: hf-gradprune convert-v4 [-h] [--overwrite]"),
        ([sys.executable, "-m", "hf_gradprune.cli.convert_v4", "--help"], "usage: hf-gradprune convert-v4 [-h]"),
    ],
)
def test_the_commands_print_their_usage(command, usage):
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed (pip install -e .)")
    done = run(command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(usage), done.stdout
    if "convert-v4" not in usage:
        for name in ("prune", "info", "bench", "export", "convert-v4"):
            assert f"\n    {name}" in done.stdout, name


def test_a_command_without_arguments_says_what_it_needs():
    done = run([sys.executable, "-m", "hf_gradprune"])
    assert done.returncode == 2 and done.stderr.startswith("usage: hf-gradprune")
    done = run([sys.executable, "-m", "hf_gradprune.cli.convert_v4"])
    assert done.returncode == 2
    assert done.stderr.startswith("hf-gradprune convert-v4: error: the following arguments are required: src, dst")
