"""pyproject.toml's lower bounds are the versions CI tests (.ci/floors.txt, installed by `make test-floor`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def declared_floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    floors = {}
    for line in [*project["dependencies"], *extras["dev"], *extras["onnx"]]:
        req = Requirement(line)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{line}: a dependency needs one '>=' floor for CI to test"
        floors[canonicalize_name(req.name)] = Version(lower[0])
    return floors


def tested_floors() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f".ci/floors.txt pins exact versions, got {line}"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_every_declared_floor_is_the_version_ci_installs():
    assert declared_floors() == tested_floors()


def test_ci_runs_the_suite_on_the_floors():
    run = (ROOT / ".ci" / "run").read_text()
    assert "make test\n" in run and "make test-floor" in run
    assert "PIP_CONSTRAINT=.ci/floors.txt" in (ROOT / "Makefile").read_text()
