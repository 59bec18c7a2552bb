"""The module paths of the flat layout (``hf_gradprune.plan``, ``hf_gradprune.hub``, ...) keep working for one
release: importing one gives the new module itself (so a test or user that patches a name patches the code that
reads it) and a ``FutureWarning`` that names the new path. An old module now split in several (``command_line``)
gives a module with all their names (copies: patch the new module instead).

A finder on ``sys.meta_path`` instead of one file per old name, so the package's folders show its stages only.
``scoring``, ``oneshot`` and ``cli`` are packages now; they export what their old modules' users imported
(``cli`` forwards the example scripts' helpers to ``cli.runs`` with the same warning).

It imports nothing of the package but by name, on request: the layer test places it at the bottom, where ``cli``
may use ``warn_moved``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module name -> new module name(s), below the package; an old module split in several gets all their names
MOVED = {
    "scores": "scoring.scores",
    "plan": "planning.plan",
    "rearrange": "planning.rearrange",
    "calibration": "oneshot.calibration",
    "budget_split": "oneshot.budget_search",
    "reconstruct": "oneshot.reconstruct",
    "checkpoint": "folders.checkpoint",
    "hub": "folders.hub",
    "v4_compat": "folders.v4_compat",
    "latency": "deploy.latency",
    "onnx_export": "deploy.onnx_export",
    "gradprune_config": "training.config",
    "gradprune_trainer": "training.trainer",
    "accelerate_compat": "training.accelerate_compat",
    "transformers_compat": "training.transformers_compat",
    "model_card": "reports.model_card",
    "run_report": "reports.run_report",
    "plots": "reports.plots",
    "metrics": "reports.metrics",
    "command_line": ("cli.main", "cli.prune", "cli.info", "cli.bench", "cli.export_onnx", "cli.inputs"),
    "data": "cli.data",
    "convert_v4": "cli.convert_v4",
}
PACKAGE = __name__.rpartition(".")[0]


def warn_moved(old: str, new: str) -> None:
    """A ``FutureWarning`` (shown to users by default) pointing at the user's import: the first frame outside the
    import system and the package."""
    frame, level = sys._getframe(1), 2  # warn's stacklevel of that frame
    while frame is not None and (
        "importlib" in frame.f_code.co_filename  # importlib.import_module, and the frozen bootstrap
        or frame.f_globals.get("__name__", "").partition(".")[0] == PACKAGE  # this finder, cli's __getattr__
    ):
        # warnings.warn does not count the bootstrap's frames (its _is_internal_frame)
        level += not ("importlib" in frame.f_code.co_filename and "_bootstrap" in frame.f_code.co_filename)
        frame = frame.f_back
    warnings.warn(f"{old} moved to {new}; the old path goes away in the next release", FutureWarning, level)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == PACKAGE and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # the default: a fresh module, filled below

    def exec_module(self, module) -> None:
        new = MOVED[module.__name__.rpartition(".")[2]]
        new = [f"{PACKAGE}.{name}" for name in ((new,) if isinstance(new, str) else new)]
        reals = [importlib.import_module(name) for name in new]
        warn_moved(module.__name__, " and ".join(new))
        if len(reals) == 1:
            sys.modules[module.__name__] = reals[0]  # what the import system returns (and sets on the package)
            return
        names = {}
        for real in reversed(reals):  # the first module's name wins
            module.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
            public = getattr(real, "__all__", [k for k in vars(real) if not k.startswith("_")])
            names = dict.fromkeys([*public, *names])
        module.__all__ = list(names)


class _Package(types.ModuleType):
    """The package's module type: an old path, once imported, does not hide the package's name it shares.
    (The import system sets a loaded submodule on its parent: ``import hf_gradprune.reconstruct`` would make
    ``hf_gradprune.reconstruct`` the module instead of the function, which it stayed in the flat layout.)"""

    def __setattr__(self, name, value):
        hides = isinstance(value, types.ModuleType) and not isinstance(getattr(self, name, value), types.ModuleType)
        if hides and name in getattr(self, "__all__", ()):
            return
        super().__setattr__(name, value)


def install() -> None:
    sys.modules[PACKAGE].__class__ = _Package
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())  # last: a real module of that name (none today) would win
