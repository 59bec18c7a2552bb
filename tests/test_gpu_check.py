"""`make gpu-check` (benchmarks/gpu/gpu_check.py): the CPU dry run end to end, the one-line stop without CUDA, parts
that fail or overrun their time box, and an install that never touches torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu import gpu_check  # noqa: E402

from hf_gradprune import Geometry, PruningPlan, current_plan  # noqa: E402

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    return proc, out, time.monotonic() - start


def test_dry_run_passes_every_part_and_writes_its_reports(dry_run):
    proc, out, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] is True
    status = {p["name"]: p["status"] for p in report["parts"]}
    assert status == {
        "tests": "passed",
        "trainer-bf16": "passed",
        "trainer-fp16": "passed",
        "speed": "passed",
        "oneshot": "passed",
        "speed-llama": "passed",
        "semi-structured": "passed",
        "llm-scale": "passed",
    }
    env = report["environment"]
    assert env["dry_run"] is True and env["torch"] == torch.__version__
    assert {"gpu", "torch_cuda", "transformers", "python"} <= set(env)
    # The short table printed as it goes: a row per part, then the verdict.
    for name in status:
        assert re.search(rf"^\| {re.escape(name)}\s+\| passed", proc.stdout, re.M), name
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu-check: all parts passed")
    assert "note: CPU dry run: fp16 autocast on the CPU has no GradScaler" in proc.stdout  # said, not hidden
    md = (out / "gpu_check.md").read_text()
    assert "# GPU check (CPU dry run)" in md and "| trainer-fp16 | passed |" in md
    assert "## Speed rows" in md and "## One-shot pruning" in md and "## Llama speed rows" in md
    assert "| package | declared | used | in range |" in md and "gpu-check: packages used: torch " in proc.stdout


def test_dry_run_tests_part_runs_the_gpu_tests_on_cpu(dry_run):
    parts = {p["name"]: p for p in json.loads((dry_run[1] / "gpu_check.json").read_text())["parts"]}
    tests = parts["tests"]
    assert tests["passed"] >= 16 and tests["failures"] == tests["errors"] == 0
    assert "tests/test_gpu.py" in tests["command"]
    assert not [s for s in tests["skipped_tests"] if "test_gpu::" in s]  # tests/test_gpu.py itself ran on the CPU
    assert any("dry run" in n for n in tests["notes"])
    assert tests["known_bugs"] == []  # a known bug would be a strict xfail test, listed there


def test_dry_run_trainer_passes_prune_twice_and_recover(dry_run):
    parts = {p["name"]: p for p in json.loads((dry_run[1] / "gpu_check.json").read_text())["parts"]}
    for precision in ("bf16", "fp16"):
        r = parts[f"trainer-{precision}"]
        assert r["precision"] == precision and r["device"] == "cpu"
        assert r["rounds_at_steps"] == [0, 40]  # before training, and in the training step at global_step 40
        assert [x["examples_scored"] for x in r["round_scores"]] == [32, 32]  # 2 scoring batches of 16 each
        assert all(x["finite"] for x in r["round_scores"])
        for k in (1, 2):  # judged on means of 20 logged steps on each side of the prune, not on single steps
            w = r[f"loss_round_{k}"]
            assert w["window"] == 20 and w["steps_after"] == 40 and w["ok"], w
            assert {"before", "right_after", "after"} <= set(w)
        assert r["steps_per_second"] > 0 and r["median_step_s_plain"] > 0
        assert r["peak_memory_mb"] is None  # no device memory on the CPU
    assert parts["trainer-fp16"]["optimizer_steps_skipped_by_gradscaler"] is None
    assert any("no GradScaler" in n for n in parts["trainer-fp16"]["notes"])


def test_dry_run_speed_rows_match_their_plans(dry_run):
    parts = {p["name"]: p for p in json.loads((dry_run[1] / "gpu_check.json").read_text())["parts"]}
    speed = parts["speed"]
    rows = speed["rows"]
    keys = {(r["model"], r["precision"], r["plan"], r["target"]) for r in rows}
    assert len(keys) == len(rows) == 2 * 9 + 2 * 3  # eager: 2 models x 3 plans x 3 targets; two compiled groups
    assert {r["precision"] for r in rows} == {"bf16", "bf16+compile"}
    assert set(speed["geometries"]) == {"tiny-bert", "tiny-gpt2"}
    for r in rows:
        heads = [list(range(h)) for h in r["heads_per_layer"]]
        plan = PruningPlan(
            Geometry(**speed["geometries"][r["model"]]), heads, [list(range(n)) for n in r["ffn_per_layer"]]
        )
        assert r["flops_removed"] == round(plan.flops_removed(r["seq"]), 4)
    assert speed["not_reached"] == [] and "backend='eager'" in speed["notes"][0]


def test_dry_run_times_prune_oneshot_step_by_step(dry_run):
    parts = {p["name"]: p for p in json.loads((dry_run[1] / "gpu_check.json").read_text())["parts"]}
    runs = {r["model"]: r for r in parts["oneshot"]["runs"]}
    assert list(runs) == ["tiny-bert", "tiny-llama"]
    for r in runs.values():
        core = {"score", "split", "prune", "reconstruct", "total"}  # + "reference" when the dense layers are copied
        assert core <= set(r["seconds"]) <= core | {"reference"}
        steps = sum(v for k, v in r["seconds"].items() if k != "total")
        assert steps <= r["seconds"]["total"] + 0.05 and r["seconds"]["total"] <= r["wall_s"] + 0.05
        assert r["finite_after"] and r["peak_memory_gib"] is None  # no device memory on the CPU
        assert r["reconstruction"]["sublayers"] == 2 * r["geometry"]["num_layers"]
        assert r["params_after"] < r["params"]
    assert runs["tiny-bert"]["dtype"] == "float32" and abs(runs["tiny-bert"]["flops_removed"] - 0.5) < 0.1
    assert runs["tiny-llama"]["dtype"] == "bfloat16" and abs(runs["tiny-llama"]["params_removed"] - 0.2) < 0.05
    assert "| tiny-llama | bfloat16 | 4 x 2 x 32 | params_budget 0.2 |" in (dry_run[1] / "gpu_check.md").read_text()


def test_dry_run_llm_scale_rows_run_each_shape_in_its_own_process(dry_run):
    parts = {p["name"]: p for p in json.loads((dry_run[1] / "gpu_check.json").read_text())["parts"]}
    runs = parts["llm-scale"]["runs"]
    assert [r["shape"] for r in runs] == ["tiny", "tiny-untied"] and all(r["status"] == "done" for r in runs)
    for r in runs:
        assert list(r["steps"]) == ["score", "split", "prune", "reconstruct", "total"]
        assert r["calibration"] == {"batches": 4, "batch_size": 2, "seq": 32, "tokens": 256}
        assert r["finite_after"] and r["params_after"] < r["params"] and r["process_s"] > 0
        assert r["measured"]["kind"].startswith("cpu: process peak RSS") and r["measured"]["peak_bytes"] > 0
    assert runs[1]["config"]["tie_word_embeddings"] is False  # the 8B shape's stand-in: untied, as Llama-3-8B
    md = (dry_run[1] / "gpu_check.md").read_text()
    assert "## One-shot pruning at LLM scale" in md and "| tiny-untied | 0.2M | cpu, float32 | 4 x 2 x 32 |" in md


def test_dry_run_semi_structured_rows_dense_against_2_4(dry_run):
    parts = {p["name"]: p for p in json.loads((dry_run[1] / "gpu_check.json").read_text())["parts"]}
    s = parts["semi-structured"]
    assert [(r["model"], r["batch"], r["tokens"]) for r in s["rows"]] == [
        ("llama-mlp", 2, 2),
        ("llama-mlp", 4, 4),
        ("bert-base", 2, 32),
        ("bert-base", 4, 64),
    ]
    for r in s["rows"]:  # emulated: the dense weights stand in for the compressed ones, so the outputs are equal
        assert r["dtype"] == "float16" and r["finite"] and r["max_abs_diff"] == r["max_rel_diff"] == 0.0
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"], abs=0.01) and "error" not in r
    assert s["conversions"]["bert-base"]["report"]["modules"][0] == "bert.encoder.layer.0.attention.self.query"
    assert len(s["conversions"]["llama-mlp"]["report"]["modules"]) == 7  # q, k, v, o, gate, up, down
    assert "emulated" in s["notes"][0] and "run on CUDA only" in s["notes"][1]  # the real call, refused on the CPU
    assert "## 2:4 semi-structured kernels (fp16, cpu)" in (dry_run[1] / "gpu_check.md").read_text()


def test_semi_structured_refusal_is_recorded_and_a_wrong_output_fails(monkeypatch):
    from gpu import gpu_sparse

    def refuse(model):
        raise gpu_sparse.ss.SemiStructuredError("torch could not convert q on NVIDIA H200: architecture mismatch")

    monkeypatch.setattr(gpu_sparse.ss, "to_semi_structured", refuse)
    result = gpu_sparse.semi_structured_part(True, deadline=time.monotonic() + 300)
    assert result["ok"] and result["problems"] == []  # the device's refusal is a finding, not a failure
    assert all("architecture mismatch" in r["error"] and r["dense_ms"] > 0 for r in result["rows"])
    assert sum("to_semi_structured refused" in n for n in result["notes"]) == 2
    assert "architecture mismatch" in gpu_sparse.markdown(result)
    monkeypatch.undo()

    monkeypatch.setattr(gpu_sparse, "dense_stand_in", lambda w: 1.5 * w)  # a kernel that computes something else
    result = gpu_sparse.semi_structured_part(True, deadline=time.monotonic() + 300)
    assert not result["ok"] and len(result["problems"]) == 4 and "differs from the dense-zeros" in result["problems"][0]


def test_llm_scale_rows_without_time_are_recorded_not_run():
    from gpu import gpu_parts

    result = gpu_parts.llm_scale_part(True, deadline=time.monotonic() + 2)
    statuses = [r["status"] for r in result["runs"]]
    assert result["ok"] and all(
        re.fullmatch(r"not run: out of time \([012] s left of the check\)", s) for s in statuses
    )
    assert result["notes"][1:] == [f"{s}: {r['status']}" for s, r in zip(("tiny", "tiny-untied"), result["runs"])]


def test_llm_scale_row_over_its_time_is_stopped_and_the_next_row_still_runs(monkeypatch):
    from gpu import gpu_parts

    monkeypatch.setitem(gpu_parts.LLM_SCALE_ROWS, "dry", (("tiny", 1), ("tiny-untied", 1)))
    monkeypatch.setitem(gpu_parts.LLM_SCALE_MIN_START_S, "dry", 0)
    start = time.monotonic()
    result = gpu_parts.llm_scale_part(True, deadline=time.monotonic() + 60)
    assert [r["status"] for r in result["runs"]] == ["not done in 1 s (stopped at its time box)"] * 2
    assert result["ok"] and time.monotonic() - start < 10


def test_dry_run_llama_speed_rows_eager_and_compiled(dry_run):
    parts = {p["name"]: p for p in json.loads((dry_run[1] / "gpu_check.json").read_text())["parts"]}
    s = parts["speed-llama"]
    rows = s["rows"]
    assert [(r["precision"], r["plan"], r["target"]) for r in rows] == [
        ("bf16", "ffn-only", 0.2),
        ("bf16", "heads+ffn", 0.5),
        ("bf16+compile", "heads+ffn", 0.5),
    ]
    g = Geometry(**s["geometries"]["tiny-llama"])
    assert g.num_key_value_heads < g.num_heads  # grouped-query attention, as Llama-3.2-1B
    kv, size = g.num_key_value_heads, g.group_size
    for r in rows:
        heads = [[k * size + j for k in range(kv) for j in range(h // kv)] for h in r["heads_per_layer"]]  # per group
        plan = PruningPlan(g, heads, [list(range(n)) for n in r["ffn_per_layer"]])
        assert r["flops_removed"] == round(plan.flops_removed(r["seq"]), 4) and r["made_at_s"] >= 0
        assert len(set(r["heads_per_layer"])) == len(set(r["ffn_per_layer"])) == 1  # uniform: a stock Llama shape
    assert s["not_reached"] == [] and s["compile_backend"] == "eager"


def test_llama_rows_compile_one_graph_per_model():
    """Regional compilation: one compiled decoder layer serves every layer of the model (no KV cache, whose guards
    would make each layer its own graph and pass torch.compile's recompile limit at 16 layers)."""
    from gpu import gpu_speed
    from torch._dynamo.utils import counters

    counters.clear()
    result = gpu_speed.llama_speed_part(True, deadline=time.monotonic() + 600)
    assert result["ok"], result["problems"]
    assert counters["stats"]["unique_graphs"] == 2  # the dense and the pruned model, 4 layers each


def test_gpu_time_boxes_add_up_to_nine_minutes():
    assert sum(p.box_gpu for p in gpu_check.PARTS) == gpu_check.GPU_BOX_TOTAL_S == 540 < gpu_check.GPU_WALL_S <= 570
    assert gpu_check.PARTS[-1].name == gpu_check.TAKES_THE_REST == "llm-scale"  # the 8B row gets what is left
    assert len({p.name for p in gpu_check.PARTS}) == len(gpu_check.PARTS) and all(
        p.box_gpu > 0 for p in gpu_check.PARTS
    )
    assert "onnx" not in " ".join(p.name for p in gpu_check.PARTS)  # no ONNX Runtime CUDA build on the GPU image


def test_trainer_loss_is_judged_on_windows_of_the_task_loss():
    from gpu import gpu_parts

    # Under distillation the logged loss mixes in the KL term: the task loss is solved back out of it.
    logs = [{"step": 1, "loss": 1.0, "distill_loss": 1.3}, {"step": 2, "loss": 0.2}, {"step": 3, "learning_rate": 1}]
    assert gpu_parts.task_losses(logs, 0.5) == {1: pytest.approx(0.7), 2: 0.2}
    # The 2026-12-04 H200 bf16 run, round 1: 0.16 before the prune, 0.10 right after, then chance (0.69): broke.
    noisy = [0.01, 0.3] * 10
    broke = gpu_parts.loss_windows([0.16] * 20, noisy + [0.69] * 130)
    assert (broke["before"], broke["right_after"], broke["after"], broke["ok"]) == (0.16, 0.155, 0.69, False)
    # A prune that set the model back, partly recovered: fine, though not back where it was.
    partly = gpu_parts.loss_windows([0.1] * 20, [0.5] * 20 + [0.3] * 20)
    assert partly["ok"] and not partly["recovered"]
    # Single noisy steps do not decide: the first and last step here are 0.01 and 0.3, the windows' means equal.
    assert gpu_parts.loss_windows(noisy, noisy[::-1] + noisy)["ok"]
    short = gpu_parts.loss_windows([0.1] * 19, [0.1] * 40)
    assert short["short"] and not short["ok"] and short["steps_before"] == 19


def test_dry_run_wall_time(dry_run):
    """The dry run is sized for CI: tiny models, a few steps (the bound leaves room for a loaded 2-core machine)."""
    assert dry_run[2] < 600


@needs_no_cuda
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu" / "gpu_check.py"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device") and "DRY_RUN=1" in lines[0]
    assert not (tmp_path / "o").exists()


def test_a_failing_part_is_reported_and_the_rest_still_run(tmp_path, monkeypatch, capsys):
    ran = []

    def tests_part(dry, box, work, log):
        ran.append("tests")
        return {"ok": True, "problems": [], "summary": "1 passed", "seconds": 0.1}

    def child_part(part, dry, box, work, log):
        ran.append(part.name)
        if part.name == "trainer-bf16":
            raise RuntimeError("CUDA error: an illegal memory access")
        return {"ok": True, "problems": [], "summary": "fine", "seconds": 0.1}

    monkeypatch.setattr(gpu_check, "run_tests_part", tests_part)
    monkeypatch.setattr(gpu_check, "run_child_part", child_part)
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.main(["--dry-run"]) == 1
    assert ran == [p.name for p in gpu_check.PARTS]
    report = json.loads((tmp_path / "gpu_check.json").read_text())  # $OUT is where the results go
    status = {p["name"]: p["status"] for p in report["parts"]}
    assert status["trainer-bf16"] == "FAILED" and status["trainer-fp16"] == status["speed"] == "passed"
    assert "illegal memory access" in report["parts"][1]["problems"][0]
    assert "FAILED" in (tmp_path / "gpu_check.md").read_text()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("gpu-check: FAILED")


def test_a_part_over_its_time_box_is_killed(tmp_path):
    with open(tmp_path / "log", "w") as log:
        start = time.monotonic()
        rc, seconds, timed_out = gpu_check._spawn([sys.executable, "-c", "import time; time.sleep(60)"], 1, log)
    assert timed_out and rc != 0 and time.monotonic() - start < 30


def test_install_never_touches_torch(tmp_path):
    pin = tmp_path / "pin.txt"
    commands = gpu_check.install_commands("py", "2.11.0+cu130", ["accelerate>=1.0", "pytest>=8"], pin)
    project, deps = commands
    assert project[:4] == ["py", "-m", "pip", "install"] and "--no-deps" in project and project[-1] == str(ROOT)
    assert deps[deps.index("--constraint") + 1] == str(pin) and pin.read_text() == "torch==2.11.0+cu130\n"
    assert deps[-2:] == ["accelerate>=1.0", "pytest>=8"]
    assert not [arg for cmd in commands for arg in cmd if arg.split("=")[0].split(">")[0] == "torch"]
    assert gpu_check.install_commands("py", "2.11.0", [], pin) == [project]  # nothing missing: the project only


# The floors of the GPU image's versions, as pyproject.toml will declare them, and a marker that never holds.
FLOOR_PYPROJECT = """
[project]
name = "x"
dependencies = [
    "torch>=2.11",
    "transformers>=5.17",
    "datasets>=3.0",
    "accelerate>=1.15",
    "evaluate>=0.4",
    "safetensors>=0.4",
    "huggingface_hub>=1.33",
    "PyYAML>=6",
    "matplotlib>=3.7",
    "tomli>=2; python_version < '3.0'",
]
[project.optional-dependencies]
dev = ["pytest>=8", "ruff>=0.6"]
onnx = ["onnxruntime>=1.20"]
"""
IMAGE = {  # the H200 image of 2026-12-04, as read there
    "torch": "2.11.0+cu130",
    "transformers": "5.17.0",
    "accelerate": "1.15.0",
    "safetensors": "0.8.0",
    "huggingface-hub": "1.33.0",
    "pyyaml": "6.0.2",
    "pytest": "8.3.5",
}


def test_the_checked_packages_are_pyprojects_dependencies():
    import tomllib

    reqs = gpu_check.declared_requirements(FLOOR_PYPROJECT)
    assert [(gpu_check.canonical(r.name), str(r.specifier)) for r in reqs] == [
        ("torch", ">=2.11"),
        ("transformers", ">=5.17"),
        ("accelerate", ">=1.15"),
        ("safetensors", ">=0.4"),
        ("huggingface-hub", ">=1.33"),
        ("pyyaml", ">=6"),
        ("pytest", ">=8"),  # from the dev extra; ruff and the onnx extra are not the check's
    ]
    # The real file: every dependency is either checked or said not to be needed, torch among the checked.
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    checked = {
        gpu_check.canonical(r.name) for r in gpu_check.declared_requirements((ROOT / "pyproject.toml").read_text())
    }
    names = {gpu_check.canonical(re.split(r"[<>=!~ \[;]", d)[0]) for d in deps}
    assert names == (checked - {"pytest"}) | gpu_check.NOT_NEEDED and "torch" in checked and "pytest" in checked


def test_packages_inside_their_ranges_need_nothing_installed():
    rows = gpu_check.package_table(gpu_check.declared_requirements(FLOOR_PYPROJECT), IMAGE)
    assert {r["name"]: (r["installed"], r["in_range"], r["install"]) for r in rows} == {
        name: (version, True, None) for name, version in IMAGE.items()
    }


def test_only_what_is_missing_or_outside_its_range_is_installed_and_never_torch():
    versions = {**IMAGE, "torch": "2.10.1+cu128", "transformers": "5.10.0", "pytest": None, "pyyaml": "not-a-version"}
    rows = {r["name"]: r for r in gpu_check.package_table(gpu_check.declared_requirements(FLOOR_PYPROJECT), versions)}
    assert [n for n, r in rows.items() if not r["in_range"]] == ["torch", "transformers", "pyyaml", "pytest"]
    assert [r["install"] for r in rows.values() if r["install"]] == ["transformers>=5.17", "PyYAML>=6", "pytest>=8"]
    assert rows["torch"]["install"] is None and rows["torch"]["declared"] == ">=2.11"
    assert gpu_check.packages_line(list(rows.values())).startswith("torch 2.10.1+cu128 (outside >=2.11), transformers")


def test_check_packages_installs_the_gaps_and_reports_the_versions_used(tmp_path, monkeypatch):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(FLOOR_PYPROJECT)
    # PyPI's CUDA wheel of torch says 2.11.0 to pip and 2.11.0+cu130 in torch.__version__: pip's is pinned.
    before = {**IMAGE, "torch": "2.11.0", "transformers": "5.10.0", "pytest": None}
    tables = [before, {**IMAGE, "pytest": "9.0.0"}]  # before and after the install
    ran, pins = [], []

    def run(cmd, **kw):
        ran.append(cmd)
        if "--constraint" in cmd:
            pins.append(Path(cmd[cmd.index("--constraint") + 1]).read_text())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(gpu_check, "PYPROJECT", pyproject)
    monkeypatch.setattr(gpu_check, "installed_versions", lambda names: tables.pop(0))
    monkeypatch.setattr(gpu_check, "project_installed_here", lambda: True)
    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    monkeypatch.setattr(gpu_check, "_run_text", lambda cmd: torch.__version__)
    with open(tmp_path / "log", "w") as log:
        done = gpu_check.check_packages(log, install=True)
    assert done["to_install"] == ["transformers>=5.17", "pytest>=8"] and done["problems"] == []
    assert ran[0][-2:] == ["-e", str(ROOT)] and ran[1][-2:] == ["transformers>=5.17", "pytest>=8"]
    assert pins == ["torch==2.11.0\n"]
    used = {r["name"]: (r["installed"], r["in_range"]) for r in done["packages"]}
    assert used["transformers"] == ("5.17.0", True) and used["pytest"] == ("9.0.0", True)

    # Inside every range and installed from this tree: nothing runs. Without --install: nothing either, but a
    # package outside its range is said, with what would fix it.
    ran.clear()
    tables[:] = [IMAGE]
    with open(tmp_path / "log", "w") as log:
        done = gpu_check.check_packages(log, install=True)
    assert ran == [] and done["commands"] == [] and "inside its declared range" in done["skipped"]
    assert done["problems"] == [] and all(r["in_range"] for r in done["packages"])
    tables[:] = [{**IMAGE, "torch": "2.10.1", "accelerate": "1.2.0"}]
    with open(tmp_path / "log", "w") as log:
        done = gpu_check.check_packages(log, install=False)
    assert ran == [] and done["problems"] == [
        "torch 2.10.1 is outside its declared range >=2.11 (never installed by the check)",
        "accelerate 1.2.0 is outside its declared range >=1.15 (--install would install it)",
    ]


def test_make_target_uses_the_machines_python_and_never_installs_torch():
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^gpu-check:(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "no gpu-check target"
    prerequisites, recipe = target.group(1).split("##")[0], target.group(2)
    assert "install" not in prerequisites.split()  # `make install` would put the CPU build of torch there
    assert "torch" not in recipe.replace("gpu_check", "") and "TORCH_SPEC" not in recipe
    assert "benchmarks/gpu/gpu_check.py" in recipe and "--install" in recipe and "DRY_RUN" in recipe


def test_a_failing_speed_row_is_reported_and_the_others_still_run():
    from speed import speed

    base = speed.tiny_bert().eval()
    g = current_plan(base).geometry
    other = Geometry(**{**g.to_dict(), "num_layers": 3})  # a plan for another model: prune_model refuses it
    plans = {("uniform", 0.5): speed.uniform_plan(other, 0.5), ("uniform", 0.25): speed.uniform_plan(g, 0.25)}
    errors = []
    rows = speed.time_rows(
        "tiny", base, plans, precision="fp32", batch=1, seq=4, repeats=1, on_error=lambda *e: errors.append(e)
    )
    assert [(r["plan"], r["target"]) for r in rows] == [("uniform", 0.25)]
    assert [(k, t, type(e).__name__) for k, t, e in errors] == [("uniform", 0.5, "PlanError")]
    with pytest.raises(Exception, match="different model"):  # the CPU benchmark keeps failing loudly
        speed.time_rows("tiny", base, plans, precision="fp32", batch=1, seq=4, repeats=1)


def test_speed_part_past_its_deadline_starts_nothing_and_says_so():
    from gpu import gpu_speed

    result = gpu_speed.speed_part(True, deadline=time.monotonic() - 1)
    assert result["rows"] == [] and result["ok"] is False
    assert len(result["not_reached"]) == len(gpu_speed.speed_settings(True))
    assert any("eager rows were made" in p for p in result["problems"])


def test_make_resolves_the_python_and_the_flags():
    def planned(*args):
        # Under `make test` this runs inside make: drop the parent's variables so the child plans as if typed.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
        cmd = ["make", "--no-print-directory", "-n", "gpu-check", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert planned() == ["python3", "benchmarks/gpu/gpu_check.py", "--install"]  # the machine's own python3
    dry = planned("DRY_RUN=1")
    assert dry[1:] == ["benchmarks/gpu/gpu_check.py", "--install", "--dry-run"]
    assert dry[0] in (".venv/bin/python", "python3")
    assert planned("GPU_PYTHON=/opt/py/bin/python3")[0] == "/opt/py/bin/python3"
