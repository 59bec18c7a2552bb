"""`make gpu-check`: every GPU check of this project in one command, for the rare, short hours on a GPU machine.

Parts, each in its own process with its own time box (one failing part is reported and the rest still run):
1. ``tests``: every ``@pytest.mark.gpu`` test (tests/test_gpu.py and the others) on BERT and GPT-2;
2. ``trainer-bf16``: a real ``GradPruneTrainer`` pass in bf16 on a BERT-base-shaped random model;
3. ``trainer-fp16``: the same in fp16 with the GradScaler;
4. ``speed``: the GPU speed rows (BERT-base, GPT-2-small; bf16 at batch 64 and 256 x 128; eager and
   ``torch.compile``; uniform and uneven plans at 25/50/75%) against the probe's limits;
5. ``oneshot``: ``prune_oneshot`` timed step by step (score, split, prune, reconstruct) with peak CUDA memory, on a
   BERT-base shape (fp32) and a Llama-3.2-1B shape (bf16, SDPA), random weights and random-token calibration;
6. ``speed-llama``: bf16 speed rows of a Llama-3.2-1B body at 8 x 512, dense vs uniform plans, eager and
   ``torch.compile``;
7. ``semi-structured``: 2:4 weights through torch's semi-structured kernels (``to_semi_structured``) against the same
   weights dense with exact zeros, fp16: a Llama-3.2-1B-shaped MLP and BERT-base at batch 64 and 256, with the
   device's name and compute capability, and a refusal by the device recorded, not fatal (``gpu_sparse.py``);
8. ``llm-scale``: ``oneshot/llm_scale.py``'s GPU rows: ``prune_oneshot`` on Llama-3.2-1B and Llama-3-8B shapes, bf16,
   128 x 2,048 calibration tokens, each shape in its own process; the issue-22 goals judged in the 8B row.

The GPU time boxes add up to 9 minutes (``GPU_BOX_TOTAL_S``), inside a 10-minute command; the last part gets at least
its box and whatever is left of ``GPU_WALL_S`` seconds since the check began.

There is no ONNX Runtime CUDA part: the GPU image has only the CPU build of onnxruntime, and the GPU wheel
(onnxruntime-gpu) is too large to carry to the machine. ``hf_gradprune.export_onnx`` is checked on the CPU
(tests/test_onnx_export.py, benchmarks/deploy/deploy.py).

It runs on the machine's own Python and packages when they are inside the ranges pyproject.toml declares
(``[project].dependencies``, and pytest from the ``dev`` extra; read with ``packaging``): nothing has to be carried
to the machine. ``--install`` installs this project (``pip install --no-deps -e .``) and only what is missing or
outside its declared range, with torch pinned to the machine's version; torch itself is never installed. The results
say which version of each package was used and whether it was inside its range.

Results: ``gpu_check.json``, ``gpu_check.md`` and ``gpu_check.log`` under ``$OUT`` when set, else under
``outputs/gpu-check/``. Exit 0 only if every part passed. Without CUDA it stops at once with one line;
``--dry-run`` runs the same code on the CPU on tiny models (``make gpu-check DRY_RUN=1``; tests/test_gpu_check.py).

One module of about 600 lines because it is the one file the GPU machine is started with: the environment, the
install, the parts' processes and their time boxes, and the report; what the parts measure is in ``gpu_parts.py``,
``gpu_speed.py`` and ``gpu_sparse.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]  # common, tables and the groups import from here
ROOT = BENCHMARKS.parent
DRY_ENV = "HF_GRADPRUNE_GPU_DRY_RUN"  # tests/test_gpu.py runs on the CPU when this is "1"
PYPROJECT = ROOT / "pyproject.toml"
# The machine's packages are held to the ranges pyproject.toml declares ([project].dependencies, and pytest from the
# dev extra). torch is checked but never installed (the machine's CUDA build is the point); the dependencies in
# NOT_NEEDED serve the examples and reports only and are neither checked nor installed.
NEVER_INSTALLED = {"torch"}
NOT_NEEDED = {"datasets", "evaluate", "matplotlib"}
FROM_EXTRAS = {"dev": {"pytest"}}


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    box_gpu: int  # seconds; the boxes of a GPU run add up to GPU_BOX_TOTAL_S
    box_dry: int


PARTS = (
    Part("tests", "gpu-marked tests: surgery, scoring in bf16/fp16, GradScaler overflow, save/reload", 45, 240),
    Part("trainer-bf16", "GradPruneTrainer pass in bf16: prune at step 0, distil, second round", 35, 180),
    Part("trainer-fp16", "the same pass in fp16 with the GradScaler", 35, 180),
    Part("speed", "GPU speed rows: bf16 b64/b256 x 128, eager and torch.compile, 25/50/75%", 120, 180),
    Part("oneshot", "prune_oneshot timed: BERT-base shape (fp32), Llama-3.2-1B shape (bf16)", 140, 120),
    Part("speed-llama", "Llama-3.2-1B body, bf16 b8 x 512: dense vs uniform plans, eager and torch.compile", 105, 120),
    Part("semi-structured", "2:4 kernels vs dense zeros, fp16: Llama-1B MLP and BERT-base, b64/b256", 30, 120),
    # llm-scale's box is its floor: it also gets whatever the parts before it left of GPU_WALL_S
    Part("llm-scale", "prune_oneshot at 128 x 2,048 tokens, bf16: Llama-3.2-1B and Llama-3-8B shapes", 30, 150),
)
GPU_BOX_TOTAL_S = 540  # the GPU boxes add up to 9 minutes, inside a 10-minute command
# The last part (llm-scale) gets at least its box, and whatever is left of this many seconds since the check began:
# its 8B row takes the time the parts before it did not use.
GPU_WALL_S = 570
TAKES_THE_REST = "llm-scale"


# ---------------------------------------------------------------------------------------------- environment
def no_cuda_line() -> str | None:
    """None when CUDA is usable, else the one line to stop with."""
    try:
        import torch
    except ImportError:
        return (
            f"gpu-check: {sys.executable} has no torch: run it with the Python that holds the machine's CUDA build "
            "of torch (make gpu-check GPU_PYTHON=/path/to/python)"
        )

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return (
        f"gpu-check: no CUDA device (torch {torch.__version__}, {build}): run it on a GPU machine, "
        "or `make gpu-check DRY_RUN=1` for the CPU dry run"
    )


def environment(dry: bool) -> dict:
    """GPU name, driver, torch and CUDA versions, and what else the numbers depend on."""
    import torch
    import transformers

    info = {
        "dry_run": dry,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": transformers.__version__,
        "git_commit": _run_text(["git", "rev-parse", "--short", "HEAD"]),
    }
    try:
        import hf_gradprune

        info["hf_gradprune"] = f"{hf_gradprune.__version__} ({Path(hf_gradprune.__file__).parent})"
    except ImportError as err:  # pragma: no cover - reported, the parts will fail on it
        info["hf_gradprune"] = f"not importable: {err}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            driver=_run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        )
        if info["driver"] is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                info["driver"] = pynvml.nvmlSystemGetDriverVersion()
            except Exception:  # noqa: BLE001 - the driver version is nice to have
                pass
    else:
        info["gpu"] = None
    return info


def _run_text(cmd) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip().splitlines()
    return text[0].strip() if out.returncode == 0 and text else None


# ---------------------------------------------------------------------------------------------- install
def _packaging():
    """``packaging``'s Requirement and InvalidVersion: the package (a dependency of transformers), else pip's copy."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import InvalidVersion
    except ImportError:  # pragma: no cover - pip vendors it
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import InvalidVersion
    return Requirement, InvalidVersion


def _toml(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10: pip vendors tomli
        from pip._vendor import tomli as tomllib
    return tomllib.loads(text)


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503): ``PyYAML`` -> ``pyyaml``, ``huggingface_hub`` ->
    ``huggingface-hub``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements(pyproject: str) -> list:
    """What the check holds the machine's packages to (``packaging`` Requirements): pyproject.toml's
    ``[project].dependencies`` but NOT_NEEDED, and the FROM_EXTRAS names of its optional dependencies; requirements
    whose marker does not hold on this Python are left out."""
    Requirement, _ = _packaging()
    project = _toml(pyproject)["project"]
    specs = list(project.get("dependencies", []))
    for extra, names in FROM_EXTRAS.items():
        specs += [
            s
            for s in project.get("optional-dependencies", {}).get(extra, [])
            if canonical(Requirement(s).name) in names
        ]
    reqs = [Requirement(s) for s in specs]
    return [r for r in reqs if canonical(r.name) not in NOT_NEEDED and (r.marker is None or r.marker.evaluate())]


def installed_versions(names) -> dict[str, str | None]:
    """The installed version of each distribution (None: not installed), as this Python sees them."""
    from importlib import metadata

    importlib.invalidate_caches()
    out = {}
    for name in names:
        try:
            out[canonical(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[canonical(name)] = None
    return out


def package_table(requirements, versions: dict[str, str | None]) -> list[dict]:
    """One row per requirement: the declared range, the installed version (``versions``, by canonical name), whether
    it is inside the range, and whether ``--install`` installs it (outside its range, and not torch)."""
    _, InvalidVersion = _packaging()
    rows = []
    for req in requirements:
        name = canonical(req.name)
        version = versions.get(name)
        try:
            inside = version is not None and req.specifier.contains(version, prereleases=True)
        except InvalidVersion:
            inside = False
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        rows.append(
            {
                "name": name,
                "declared": str(req.specifier) or "any version",
                "installed": version,
                "in_range": inside,
                "install": None if inside or name in NEVER_INSTALLED else f"{req.name}{extras}{req.specifier}",
            }
        )
    return rows


def install_commands(python: str, torch_version: str, specs: list[str], constraints: Path) -> list[list[str]]:
    """The pip commands of ``--install``: the project without its dependencies, then ``specs`` (the requirements
    missing or outside their declared ranges) with torch pinned to the machine's own version (pip then fails
    rather than replace torch)."""
    quiet = ["--quiet", "--disable-pip-version-check", "--retries", "0", "--timeout", "10"]
    commands = [[python, "-m", "pip", "install", *quiet, "--no-deps", "--no-build-isolation", "-e", str(ROOT)]]
    if specs:
        commands.append([python, "-m", "pip", "install", *quiet, "--constraint", str(constraints), *specs])
    constraints.write_text(f"torch=={torch_version}\n")
    return commands


def project_installed_here() -> bool:
    """Whether this Python imports hf_gradprune from this tree without help (run from /, no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import hf_gradprune, os; print(os.path.dirname(hf_gradprune.__file__))"],
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
    )
    return out.returncode == 0 and Path(out.stdout.strip()).resolve() == (ROOT / "hf_gradprune").resolve()


def check_packages(log, install: bool) -> dict:
    """The machine's packages against the declared ranges; with ``install``, first install the project (no
    dependencies) and whatever is missing or outside its range, never torch. Install failures are reported, not
    fatal: the parts run from the source tree with what is there. ``packages`` in the result: what was used."""
    import torch

    requirements = declared_requirements(PYPROJECT.read_text())
    names = [r.name for r in requirements]
    before = package_table(requirements, installed_versions(names))
    specs = [r["install"] for r in before if r["install"]]
    done = {"torch_before": torch.__version__, "to_install": specs, "commands": [], "problems": []}
    if not install:
        done["skipped"] = "no --install: the packages as they are"
    elif project_installed_here() and not specs:
        done["skipped"] = "hf_gradprune is installed from this tree and every package is inside its declared range"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            # pinned to the version pip sees (PyPI's CUDA wheels say 2.11.0 where torch.__version__ says 2.11.0+cu130)
            pin = next((r["installed"] for r in before if r["name"] == "torch" and r["installed"]), torch.__version__)
            for cmd in install_commands(sys.executable, pin, specs, Path(tmp) / "torch-pin.txt"):
                done["commands"].append(" ".join(cmd))
                out = subprocess.run(cmd, capture_output=True, text=True)
                log.write(f"$ {' '.join(cmd)}\n{out.stdout}{out.stderr}\n")
                if out.returncode:
                    done["problems"].append(
                        f"exit {out.returncode}: {' '.join(cmd[3:6])}... {out.stderr.strip()[-300:]}"
                    )
        after = _run_text([sys.executable, "-c", "import torch; print(torch.__version__)"])
        done["torch_after"] = after
        if after != torch.__version__:
            done["problems"].append(f"torch changed from {torch.__version__} to {after}: that must never happen")
    done["packages"] = package_table(requirements, installed_versions(names)) if done["commands"] else before
    for row in done["packages"]:
        if not row["in_range"]:
            why = (
                "never installed by the check"
                if row["name"] in NEVER_INSTALLED
                else "the install did not fix it"
                if install
                else "--install would install it"
            )
            if row["installed"] is None:
                done["problems"].append(f"{row['name']} is not installed ({row['declared']} declared; {why})")
            else:
                done["problems"].append(
                    f"{row['name']} {row['installed']} is outside its declared range {row['declared']} ({why})"
                )
    return done


def packages_line(rows: list[dict]) -> str:
    return ", ".join(
        f"{r['name']} {r['installed'] or 'missing'}{'' if r['in_range'] else ' (outside ' + r['declared'] + ')'}"
        for r in rows
    )


# ---------------------------------------------------------------------------------------------- parts
def gpu_test_files() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "pytest.mark.gpu" in p.read_text()
    )


def run_tests_part(dry: bool, box: int, work: Path, log) -> dict:
    junit = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    cmd += ["-o", "addopts=", *gpu_test_files()]
    rc, seconds, timed_out = _spawn(cmd, box, log, {DRY_ENV: "1"} if dry else {})
    result = {"command": " ".join(cmd[1:]), "returncode": rc, "timed_out": timed_out, "seconds": seconds}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped, known = [], [], []
    if junit.exists():
        root = ET.parse(junit).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        for suite in suites:
            for key in counts:
                counts[key] += int(suite.get(key, 0))
            for case in suite.iter("testcase"):
                name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
                for tag in ("failure", "error"):
                    node = case.find(tag)
                    if node is not None:
                        failed.append(f"{name}: {(node.get('message') or '')[:300]}")
                node = case.find("skipped")
                if node is not None and node.get("type") == "pytest.xfail":  # a known bug, said in the test
                    known.append(f"{name}: {(node.get('message') or '')[:400]}")
                elif node is not None:
                    skipped.append(f"{name}: {(node.get('message') or '')[:200]}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    result.update(counts, passed=passed, failed=failed, skipped_tests=skipped, known_bugs=known)
    problems = [f"failed {f}" for f in failed]
    if timed_out:
        problems.append(f"timed out after {box} s")
    elif rc not in (0,) and not failed:
        problems.append(f"pytest exited {rc} (collection error? see gpu_check.log)")
    if passed == 0:
        problems.append("no test passed")
    if not dry and skipped:
        problems.append(f"{len(skipped)} gpu test(s) skipped on a GPU machine: {skipped[:3]}")
    result["notes"] = [f"known bug (xfail): {k}" for k in known]
    if dry:
        result["notes"].insert(
            0,
            "CPU dry run: tests/test_gpu.py runs on the CPU (bf16/fp16 CPU kernels, torch's CPU GradScaler); "
            "the CUDA-only gpu tests of other files skip",
        )
    result.update(ok=not problems, problems=problems)
    result["summary"] = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {len(skipped)} skipped" + (
        f", {len(known)} known bug(s) (xfail)" if known else ""
    )
    return result


def run_child_part(part: Part, dry: bool, box: int, work: Path, log) -> dict:
    result_path = work / f"{part.name}.json"
    cmd = [sys.executable, str(Path(__file__)), "--part", part.name, "--result", str(result_path)]
    cmd += ["--box", str(box)] + (["--dry-run"] if dry else [])
    rc, seconds, timed_out = _spawn(cmd, box, log)
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    problems = list(result.get("problems", []))
    if timed_out:
        problems.append(f"timed out after {box} s (results so far are kept)")
    elif rc != 0:
        problems.append(f"the part's process exited {rc} (its traceback is in gpu_check.log)")
    if not result:
        problems.append("no result was written")
    result.update(returncode=rc, timed_out=timed_out, seconds=seconds, problems=problems)
    result["ok"] = bool(result.get("ok")) and not problems
    result["summary"] = summarize(part.name, result)
    return result


def _spawn(cmd, box: int, log, extra_env=None) -> tuple[int | None, float, bool]:
    """Run ``cmd`` in its own process group, output to ``log``; kill the whole group at ``box`` seconds."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=box)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc, timed_out = proc.wait(), True
    return rc, round(time.monotonic() - start, 1), timed_out


def child(name: str, dry: bool, box: int, result_path: Path) -> int:
    """One part, inside its own process: writes its result JSON (the speed part after every group of rows)."""
    import torch

    from gpu import gpu_parts, gpu_sparse, gpu_speed

    torch.manual_seed(0)
    if name in ("trainer-bf16", "trainer-fp16"):
        with tempfile.TemporaryDirectory() as tmp:
            result = gpu_parts.trainer_pass(name.split("-")[1], dry, Path(tmp))
    elif name in ("speed", "speed-llama", "oneshot", "llm-scale", "semi-structured"):
        deadline = time.monotonic() + box - (15 if dry else 20)  # leave time to write the result
        key = "runs" if name in ("oneshot", "llm-scale") else "rows"

        def partial(made):  # what is made so far, kept if the box kills the process
            result_path.write_text(json.dumps({key: made, "partial": True, "ok": False, "problems": []}))

        if name == "speed":
            result = gpu_speed.speed_part(dry, deadline, on_rows=partial)
        elif name == "speed-llama":
            result = gpu_speed.llama_speed_part(dry, deadline, on_rows=partial)
        elif name == "llm-scale":
            result = gpu_parts.llm_scale_part(dry, deadline, on_runs=partial)
        elif name == "semi-structured":
            result = gpu_sparse.semi_structured_part(dry, deadline, on_rows=partial)
        else:
            result = gpu_parts.oneshot_part(dry, on_runs=partial)
    else:
        raise SystemExit(f"unknown part {name!r}")
    result_path.write_text(json.dumps(result, indent=1))
    return 0


def summarize(name: str, r: dict) -> str:
    if name.startswith("trainer") and "loss_round_1" in r:
        bits = [f"{r['steps_per_second']} steps/s"]
        if r.get("peak_memory_mb") is not None:
            bits.append(f"peak {r['peak_memory_mb'] / 1024:.1f} GiB")
        if r.get("scoring_memory_overhead") is not None:
            bits.append(f"scoring memory {r['scoring_memory_overhead']:+.1%}")
        for k in (1, 2):
            w = r[f"loss_round_{k}"]
            if not w.get("short"):
                rose = "" if w["ok"] else " (rose)"
                bits.append(f"loss round {k} {w['before']:.3f} | {w['right_after']:.3f}→{w['after']:.3f}{rose}")
        if r.get("optimizer_steps_skipped_by_gradscaler") is not None:
            bits.append(f"{r['optimizer_steps_skipped_by_gradscaler']} overflow steps")
        bits.append(f"{r['flops_removed']:.0%} FLOPs removed")
        return ", ".join(bits)
    if name == "speed" and "rows" in r:
        text = f"{len(r['rows'])} rows"
        for p in r.get("probe_comparison", []):
            if p["target"] == 0.5:
                text += f"; BERT-base b256 {p['precision']} 50%: {p['speedup']:.2f}× (probe {p['probe']:.2f}×)"
        if r.get("not_reached"):
            text += f"; {len(r['not_reached'])} group(s) not reached"
        return text
    if name == "speed-llama" and "rows" in r:
        return "; ".join(f"{x['precision']} {x['plan']} {x['target']:.0%}: {x['speedup']:.2f}×" for x in r["rows"])
    if name == "semi-structured" and "rows" in r:
        from gpu.gpu_sparse import summary

        return summary(r)
    if name == "llm-scale" and "runs" in r:
        from oneshot.llm_scale import summary

        return "; ".join(summary(x) for x in r["runs"])
    if name == "oneshot" and "runs" in r:
        bits = []
        for x in r["runs"]:
            steps = ", ".join(f"{k} {v:.1f}" for k, v in x["seconds"].items() if k != "total")
            peak = f", peak {x['peak_memory_gib']:.1f} GiB" if x.get("peak_memory_gib") is not None else ""
            bits.append(f"{x['model']}: {x['seconds']['total']:.1f} s ({steps}){peak}")
        return "; ".join(bits)
    return r.get("summary", "")


# ---------------------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    import tables

    env = report["environment"]
    title = "GPU check (CPU dry run)" if env["dry_run"] else f"GPU check on {env.get('gpu')}"
    out = [f"# {title}", "", f"Verdict: **{'all parts passed' if report['ok'] else 'FAILED'}**", ""]
    out += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]
    install = report.get("install") or {}
    if install.get("packages"):
        out += ["", "| package | declared | used | in range |", "|---|---|---|---|"]
        out += [
            f"| {r['name']} | {r['declared']} | {r['installed'] or 'missing'} | {'yes' if r['in_range'] else '**no**'} "
            "|"
            for r in install["packages"]
        ]
        installed = ["this project (-e ., no dependencies)", *install["to_install"]] if install.get("commands") else []
        out += ["", f"Installed by the check: {', '.join(installed) or 'nothing'}"]
    out += ["", f"Wall time: {report['wall_seconds']:.0f} s", "", "| part | status | seconds | result |"]
    out.append("|---|---|---|---|")
    for p in report["parts"]:
        out.append(f"| {p['name']} | {p['status']} | {p.get('seconds', '')} | {p.get('summary', '')} |")
    for p in report["parts"]:
        if p.get("problems"):
            out += ["", f"**{p['name']}: problems**", ""] + [f"- {x}" for x in p["problems"]]
        if p.get("notes"):
            out += ["", f"**{p['name']}: notes**", ""] + [f"- {x}" for x in p["notes"]]
    oneshot = next((p for p in report["parts"] if p["name"] == "oneshot"), {})
    if oneshot.get("runs"):
        out += ["", "## One-shot pruning (`prune_oneshot`, seconds per step)", ""]
        out += ["| model | dtype | calibration | target | score | split | prune | reconstruct | total | peak GiB |"]
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for x in oneshot["runs"]:
            c, sec = x["calibration"], x["seconds"]
            target = ", ".join(f"{k} {v}" for k, v in x["target"].items())
            steps = " | ".join(str(sec.get(k, "")) for k in ("score", "split", "prune", "reconstruct", "total"))
            out.append(
                f"| {x['model']} | {x['dtype']} | {c['batches']} x {c['batch']} x {c['seq']} | {target} | {steps} "
                f"| {x['peak_memory_gib'] if x['peak_memory_gib'] is not None else ''} |"
            )
    scale = next((p for p in report["parts"] if p["name"] == "llm-scale"), {})
    if scale.get("runs"):
        from oneshot.llm_scale import markdown as scale_markdown

        out += ["", "## One-shot pruning at LLM scale (`oneshot/llm_scale.py`, seconds per step)", ""]
        out.append(scale_markdown(scale["runs"]).rstrip("\n"))
    sparse = next((p for p in report["parts"] if p["name"] == "semi-structured"), {})
    if sparse.get("rows"):
        from gpu.gpu_sparse import markdown as sparse_markdown

        out += ["", sparse_markdown(sparse).rstrip("\n")]
    llama = next((p for p in report["parts"] if p["name"] == "speed-llama"), {})
    if llama.get("rows"):
        out += ["", f"## Llama speed rows (batch {llama['batch']} x {llama['seq']}, {llama['precision']})", ""]
        out += [
            "| precision | plan | target | dense ms | pruned ms | speedup | ideal |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in llama["rows"]:
            out.append(
                f"| {x['precision']} | {x['plan']} | {x['target']:.0%} | {x['dense_ms']} | {x['pruned_ms']} "
                f"| {x['speedup']:.2f}× | {x['ideal_speedup']:.2f}× |"
            )
    speed = next((p for p in report["parts"] if p["name"] == "speed"), {})
    if speed.get("rows"):
        out += ["", "## Speed rows", "", tables.speed_tables({"rows": speed["rows"]})]
    if speed.get("probe_comparison"):
        out += ["", "BERT-base, bf16, batch 256 x 128, uniform plans, against the probe's limits:", ""]
        out += ["| precision | target | speedup | ideal | probe |", "|---|---|---|---|---|"]
        for p in speed["probe_comparison"]:
            out.append(
                f"| {p['precision']} | {p['target']:.0%} | {p['speedup']:.2f}× | {p['ideal_speedup']:.2f}× "
                f"| {p['probe']:.2f}× |"
            )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU on tiny models")
    parser.add_argument("--out", type=Path, default=None, help="default: $OUT, else outputs/gpu-check")
    parser.add_argument(
        "--install",
        action="store_true",
        help="first install the project and any package missing or outside its declared range (never torch)",
    )
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], default=None)
    parser.add_argument("--part", help=argparse.SUPPRESS)  # a child process running one part
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--box", type=int, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(BENCHMARKS)]
    if args.part:
        return child(args.part, args.dry_run, args.box, args.result)

    start = time.monotonic()
    if not args.dry_run:
        line = no_cuda_line()
        if line:
            print(line, flush=True)
            return 2
    out = args.out or Path(os.environ.get("OUT") or ROOT / "outputs" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": None, "install": None, "parts": []}
    with open(out / "gpu_check.log", "w") as log, tempfile.TemporaryDirectory() as tmp:
        report["install"] = check_packages(log, args.install)
        print(f"gpu-check: packages used: {packages_line(report['install']['packages'])}", flush=True)
        for problem in report["install"]["problems"]:
            print(f"gpu-check: install: {problem}", flush=True)
        report["environment"] = env = environment(args.dry_run)
        where = "CPU dry run" if args.dry_run else f"{env['gpu']}, driver {env.get('driver')}"
        print(f"gpu-check: {where}; torch {env['torch']} (CUDA {env['torch_cuda']}); results in {out}", flush=True)
        print(f"| {'part':<15} | {'status':<7} | {'s':>5} | result", flush=True)
        for part in PARTS:
            if args.parts and part.name not in args.parts:
                continue
            box = part.box_dry if args.dry_run else part.box_gpu
            if part.name == TAKES_THE_REST and not args.dry_run:
                box = max(box, int(GPU_WALL_S - (time.monotonic() - start)))
            print(f"| {part.name:<15} | running | box {box} s: {part.what}", flush=True)
            try:
                work = Path(tmp) / part.name
                work.mkdir()
                if part.name == "tests":
                    result = run_tests_part(args.dry_run, box, work, log)
                else:
                    result = run_child_part(part, args.dry_run, box, work, log)
            except Exception as err:  # noqa: BLE001 - one part failing must not stop the others
                result = {"ok": False, "problems": [f"{type(err).__name__}: {err}"], "summary": "error"}
            status = "passed" if result["ok"] else "FAILED"
            result = {"name": part.name, "what": part.what, "status": status, "box_seconds": box, **result}
            report["parts"].append(result)
            seconds = result.get("seconds", 0)
            print(f"| {part.name:<15} | {status:<7} | {seconds:>5} | {result.get('summary', '')}", flush=True)
            for problem in result.get("problems", [])[:5]:
                print(f"|   {problem[:300]}", flush=True)
            for note in result.get("notes", [])[:3]:
                print(f"|   note: {note[:300]}", flush=True)
            log.flush()
    # An install that failed (no network, a read-only site) and packages outside their declared ranges are reported
    # (the results then speak for those versions) but do not fail the check, since the parts run from the source
    # tree; a changed torch does.
    torch_changed = any("torch changed" in x for x in (report["install"] or {}).get("problems", []))
    report["ok"] = all(p["status"] != "FAILED" for p in report["parts"]) and not torch_changed
    report["wall_seconds"] = round(time.monotonic() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(markdown(report))
    verdict = "all parts passed" if report["ok"] else "FAILED"
    print(f"gpu-check: {verdict} in {report['wall_seconds']:.0f} s; {out / 'gpu_check.md'}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
