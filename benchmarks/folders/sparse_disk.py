"""Disk: a 50% unstructured fp16 folder stored as values + bitmask (``save_pruned(sparse_format="bitmask")``)
against the same folder stored dense with exact zeros (the default).

Models are built from their configs with random weights (sizes do not depend on the values, only on the zeros):
the quickstart's MiniLM shape (all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, FFN 1536, vocabulary 30,522) and
SmolLM2-135M's (Llama, 30 layers, hidden 576, 9 query / 3 key-value heads, FFN 1536, vocabulary 49,152, tied
embeddings). Weights are zeroed by magnitude, 50% per matrix, then cast to fp16. Embeddings stay dense by
default, so three ratios are reported: the whole folder, the weight file, and the sparsified matrices alone;
and again with ``extra_modules`` covering the LM head (SmolLM2 ties it to the embeddings, so that is one
matrix) or, for MiniLM (no LM head), the word embeddings. Each bitmask folder is reloaded through ``load_pruned``
and compared bit for bit. ``WeightMasks.apply_`` leaves +0.0 (a masked fill); a -0.0 zero would cost the format a
sign bit per zero, so the folder with every zero forced to +0.0 is measured too (equal since b3e2be8).
Goal (issue 23): the compressed folder at most 60% of the dense one.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import bench_args, machine, write_json
from safetensors import safe_open
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from hf_gradprune import load_pruned, save_pruned
from hf_gradprune.sparsity import WeightMasks, record_weight_sparsity, weight_targets

GOAL = 0.60
SPARSITY = 0.5

MODELS = {
    "MiniLM-L6-H384 (BERT)": (
        BertModel,
        BertConfig(
            vocab_size=30522,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
        ),
        ("embeddings.word_embeddings",),
    ),
    "SmolLM2-135M (Llama)": (
        LlamaForCausalLM,
        LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
        ),
        ("lm_head",),
    ),
}
QUICK = {
    "tiny BERT": (BertModel, BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128), ("embeddings.word_embeddings",)),
    "tiny Llama": (LlamaForCausalLM, LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                 tie_word_embeddings=True), ("lm_head",)),
}  # fmt: skip


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(".safetensors"))


def matrix_bytes(folder: Path, names: set[str]) -> int:
    """Bytes of the tensors that store ``names``: the dense matrices, or their values, bitmasks and sign bits."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if key in names or key.rsplit(".", 1)[0] in names and key.rsplit(".", 1)[1] in ("bitmask", "negzero"):
                    t = f.get_slice(key)
                    shape = t.get_shape()
                    size = {"F16": 2, "BF16": 2, "F32": 4, "U8": 1}[t.get_dtype()]
                    total += size * (int(torch.tensor(shape).prod()) if shape else 1)
    return total


def sparsify(model, extra) -> list[str]:
    targets = weight_targets(model, extra)
    scores = {t.name: t.matrix.detach().abs().float() for t in targets}
    WeightMasks.from_scores(targets, scores, SPARSITY, "unstructured", "layer").apply_(model)
    record_weight_sparsity(model, targets, pattern="unstructured", sparsity=SPARSITY, method="magnitude", scope="layer")
    params = dict(model.named_parameters(remove_duplicate=False))
    wanted = {id(params[t.param_name]) for t in targets}
    return sorted(n for n, p in params.items() if id(p) in wanted)


def same_bits(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].view(torch.int16), sb[k].view(torch.int16)) for k in sa)


def measure(name: str, cls, config, extra, work: Path) -> dict:
    torch.manual_seed(0)
    model = cls(config).eval()
    names = set(sparsify(model, extra))
    model.half()
    row = {"model": name, "dtype": "float16", "sparsity": SPARSITY, "pattern": "unstructured", "method": "magnitude"}
    row["extra_modules"] = list(extra)
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["sparsified_parameters"] = sum(p.numel() for n, p in model.named_parameters() if n in names)
    sizes = {}
    for fmt in ("dense", "bitmask"):
        folder = work / fmt
        start = time.perf_counter()
        save_pruned(model, folder, sparse_format=fmt)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        loaded = load_pruned(folder)
        load_seconds = time.perf_counter() - start
        sizes[fmt] = {
            "folder_bytes": folder_bytes(folder),
            "weight_bytes": weight_bytes(folder),
            "matrix_bytes": matrix_bytes(folder, names),
            "save_seconds": round(seconds, 2),
            "load_seconds": round(load_seconds, 2),
            "reload_bit_exact": same_bits(loaded, model),
        }
        del loaded
    # A -0.0 zero (a product with a 0 mask) would make the bitmask format keep sign bits (a bit per zero).
    # WeightMasks.apply_ fills +0.0 since b3e2be8, so this row checks that no sign bits are left to pay for.
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if name_ in names:
                p.masked_fill_(p == 0, 0.0)
    folder = work / "positive_zeros"
    save_pruned(model, folder, sparse_format="bitmask")
    sizes["bitmask_positive_zeros"] = {
        "folder_bytes": folder_bytes(folder),
        "weight_bytes": weight_bytes(folder),
        "matrix_bytes": matrix_bytes(folder, names),
    }
    row.update(sizes)
    for key in ("folder_bytes", "weight_bytes", "matrix_bytes"):
        row[f"ratio_{key.removesuffix('_bytes')}"] = round(sizes["bitmask"][key] / sizes["dense"][key], 4)
        ratio = sizes["bitmask_positive_zeros"][key] / sizes["dense"][key]
        row[f"ratio_{key.removesuffix('_bytes')}_positive_zeros"] = round(ratio, 4)
    row["meets_goal"] = row["ratio_folder"] <= GOAL
    return row


def run(quick: bool) -> dict:
    rows = []
    for name, (cls, config, extra) in (QUICK if quick else MODELS).items():
        for extra_modules in ((), extra):
            with tempfile.TemporaryDirectory(prefix="sparse_disk-") as tmp:  # a few hundred MB per row
                row = measure(name, cls, config, extra_modules, Path(tmp))
            print(
                f"{name:24s} extra={list(extra_modules)!s:34s} folder {row['dense']['folder_bytes'] / 1e6:7.1f} MB"
                f" -> {row['bitmask']['folder_bytes'] / 1e6:7.1f} MB: {row['ratio_folder']:.1%} (matrices "
                f"{row['ratio_matrix']:.1%}); zeros +0.0: {row['ratio_folder_positive_zeros']:.1%} (matrices "
                f"{row['ratio_matrix_positive_zeros']:.1%}); bit-exact {row['bitmask']['reload_bit_exact']}",
                flush=True,
            )
            rows.append(row)
    return {
        "machine": machine(),
        "goal_ratio": GOAL,
        "note": "ratio = bitmask / dense bytes; matrix = the sparsified matrices' tensors only",
        "rows": rows,
    }


def main(argv=None) -> dict:
    args = bench_args(argv, __doc__)
    result = run(args.quick)
    write_json(args.out / "sparse_disk.json", result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
