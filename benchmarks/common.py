"""Shared pieces of the benchmarks: the quickstart's model and data (or tiny stand-ins with ``--quick``),
the dense fine-tune (cached), scoring, evaluation and a fixed-budget recovery. Public API only."""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import platform
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from hf_gradprune import GRADIENT_METHODS, GradPruneConfig, GradPruneTrainer, ImportanceScorer, PruningPlan

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Task:
    name: str
    tokenizer: object
    train: object  # datasets.Dataset
    dev: object
    collator: object
    dense_dir: Path
    max_len: int


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def _tokenize(tokenizer, rows, max_len):
    from datasets import Dataset  # here, not at the top: the GPU check imports this module without datasets

    ds = Dataset.from_list(rows)

    def fn(batch):
        out = tokenizer(batch["sentence"], truncation=True, max_length=max_len)
        out["labels"] = batch["label"]
        return out

    return ds.map(fn, batched=True, remove_columns=ds.column_names)


def load_task(quick: bool, work: Path) -> Task:
    """MiniLM + Rotten Tomatoes (as the quickstart), or a tiny BERT + synthetic sentences with ``quick``."""
    work.mkdir(parents=True, exist_ok=True)
    if quick:
        from hf_gradprune.testing import WORDS, save_tiny_tokenizer, sentiment_rows

        model_dir = work / "tiny-bert"
        if not (model_dir / "config.json").exists():
            tokenizer = save_tiny_tokenizer(model_dir)
            torch.manual_seed(0)
            config = BertConfig(
                vocab_size=5 + len(WORDS),
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=64,
                num_labels=2,
            )
            BertForSequenceClassification(config).save_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        train, dev = sentiment_rows(256, 0), sentiment_rows(64, 1)
        max_len = 16
        name = "tiny-bert/synthetic"
    else:
        sys.path.insert(0, str(ROOT / "examples"))
        import quickstart

        cache = ROOT / ".cache" / "quickstart"
        model_dir = quickstart.prepare_model(cache)
        train_csv, dev_csv = quickstart.prepare_data(cache)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        import csv

        def read(path):
            with open(path, encoding="utf-8") as f:
                return [{"sentence": r["sentence"], "label": int(r["label"])} for r in csv.DictReader(f)]

        train, dev = read(train_csv), read(dev_csv)
        max_len = 64
        name = "all-MiniLM-L6-v2/rotten-tomatoes"
    return Task(
        name=name,
        tokenizer=tokenizer,
        train=_tokenize(tokenizer, train, max_len),
        dev=_tokenize(tokenizer, dev, max_len),
        collator=DataCollatorWithPadding(tokenizer),
        dense_dir=model_dir,
        max_len=max_len,
    )


def bench_work(quick: bool) -> Path:
    """The cache folder of the BERT benchmarks (task data, dense fine-tune): one, so the fine-tune is made once."""
    return ROOT / ".cache" / ("bench-quick" if quick else "bench")


def bench_task(quick: bool) -> tuple[Path, Task, object]:
    """``(cache folder, task, dense fine-tune)``: what the BERT quality benchmarks start from."""
    work = bench_work(quick)
    task = load_task(quick, work)
    return work, task, dense_model(task, work, quick)


def dense_model(task: Task, work: Path, quick: bool):
    """The dense model fine-tuned once on the task (cached in ``work``)."""
    out = work / "dense-finetuned"
    if (out / "config.json").exists():
        return AutoModelForSequenceClassification.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(task.dense_dir, num_labels=2)
    args = TrainingArguments(
        output_dir=str(work / "dense-run"),
        num_train_epochs=8 if quick else 1,
        learning_rate=3e-3 if quick else 5e-5,
        per_device_train_batch_size=32,
        save_strategy="no",
        report_to=[],
        seed=42,
        logging_steps=50,
        disable_tqdm=False,
    )
    Trainer(model=model, args=args, train_dataset=task.train, data_collator=task.collator).train()
    model.save_pretrained(out)
    task.tokenizer.save_pretrained(out)
    return model


@torch.inference_mode()
def accuracy(model, task: Task, batch_size: int = 128) -> float:
    model.eval()
    loader = torch.utils.data.DataLoader(task.dev, batch_size=batch_size, collate_fn=task.collator)
    correct = total = 0
    for batch in loader:
        labels = batch.pop("labels")
        pred = model(**batch).logits.argmax(-1)
        correct += int((pred == labels).sum())
        total += len(labels)
    return correct / total


def score(model, task: Task, methods, n_examples: int = 1024, batch_size: int = 32, seed: int = 0) -> dict:
    """Scores of every method; the gradient methods share one pass over ``n_examples`` training sentences."""
    return {m: s.scores for m, s in scorers(model, task, methods, n_examples, batch_size, seed).items()}


def scorers(
    model, task: Task, methods, n_examples: int = 1024, batch_size: int = 32, seed: int = 0, record_batches=False
) -> dict:
    """``score``'s scorers, after the pass (``record_batches``: each keeps its per-pass gate gradients)."""
    model.eval()
    extra = {"record_batches": True} if record_batches else {}
    out = {m: ImportanceScorer(model, m, seed=seed, **(extra if m in GRADIENT_METHODS else {})) for m in methods}
    grad = [s for m, s in out.items() if m in GRADIENT_METHODS]
    if grad:
        loader = torch.utils.data.DataLoader(
            task.train.shuffle(seed=seed).select(range(min(n_examples, len(task.train)))),
            batch_size=batch_size,
            collate_fn=task.collator,
        )
        for s in grad:
            s.attach()
        for batch in loader:
            model(**batch).loss.backward()
            model.zero_grad(set_to_none=True)
        for s in grad:
            s.detach()
    return out


def recovery_trainer(model, teacher, task: Task, steps: int, work: Path, seed: int = 42, **overrides):
    """A ``GradPruneTrainer`` for a fixed budget: ``steps`` optimizer steps of batch 32, distilling from ``teacher``
    (recovery only unless ``overrides`` choose a pruning schedule)."""
    config = dict(
        output_dir=str(work),
        max_steps=steps,
        learning_rate=5e-5,
        per_device_train_batch_size=32,
        warmup_steps=0.1,
        pruning_schedule="none",
        distill_alpha=0.5,
        distill_temperature=2.0,
        save_strategy="no",
        report_to=[],
        seed=seed,
        logging_steps=max(steps // 4, 1),
        disable_tqdm=True,
    )
    config.update(overrides)
    return GradPruneTrainer(
        model=model,
        args=GradPruneConfig(**config),
        train_dataset=task.train,
        data_collator=task.collator,
        teacher_model=teacher if config["distill_alpha"] > 0 else None,
    )


def recover(pruned, teacher, task: Task, steps: int, work: Path, seed: int = 42, **overrides):
    """Train ``pruned`` for the fixed recovery budget (``recovery_trainer``); returns the recovered model."""
    trainer = recovery_trainer(pruned, teacher, task, steps, work, seed, **overrides)
    trainer.train()
    return trainer.model


def plan_fields(plan, seq: int) -> dict:
    """A results row's description of a FLOPs-budget plan: the fraction removed at ``seq``, units kept, widths."""
    return {
        "flops_removed": round(plan.flops_removed(seq), 4),
        "heads_kept": plan.num_heads,
        "neurons_kept": plan.num_neurons,
        "heads_per_layer": [len(h) for h in plan.heads],
        "ffn_per_layer": [len(n) for n in plan.neurons],
    }


def copy_model(model):
    return copy.deepcopy(model)


# ``ffn_multiple_of`` of the plans whose committed results were measured before plans rounded FFN widths to 64 by
# default, and of the "uneven" rows that the rounded ones are compared with: the exact widths the scores chose.
UNROUNDED = 1


def bench_args(argv, doc: str, add=None) -> argparse.Namespace:
    """The command line every benchmark takes (``--quick``, ``--out``; ``add(parser)`` adds more). ``out`` defaults
    to ``results/quick`` or ``results/cpu``."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="tiny model and data: a smoke run")
    parser.add_argument("--out", type=Path, default=None)
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    args.out = args.out or (RESULTS / ("quick" if args.quick else "cpu"))
    _STARTED["load_average"] = load_average()
    return args


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (None where the platform has none): a busy machine's
    timings are not the model's."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# the load average when the benchmark started: bench_args (every benchmark's first call) sets it again
_STARTED = {"load_average": load_average()}

# a run whose dense model's time moved by more than this between its first and last rounds is flagged: the
# machine's speed changed under it (another process, thermal throttling), so its speedups are suspect
DRIFT_LIMIT = 0.10


def dense_drift(where: str, first_ms: float, last_ms: float) -> dict:
    """The dense model's time at the first and last rounds of ``where``; printed when it is flagged."""
    drift = (last_ms - first_ms) / first_ms
    flagged = abs(drift) > DRIFT_LIMIT
    if flagged:
        print(
            f"[drift] {where}: the dense model took {first_ms:.3f} ms in the first round and {last_ms:.3f} ms in "
            f"the last ({drift:+.1%}, over {DRIFT_LIMIT:.0%}): the machine's speed changed during the run",
            flush=True,
        )
    first_ms, last_ms, drift = round(first_ms, 3), round(last_ms, 3), round(drift, 4)
    return {"where": where, "first_ms": first_ms, "last_ms": last_ms, "drift": drift, "flagged": flagged}


def drift_record(drifts: list[dict]) -> dict:
    """What a results file says about the dense timings' drift: the limit, whether any run passed it, each run."""
    return {"limit": DRIFT_LIMIT, "flagged": any(d["flagged"] for d in drifts), "runs": drifts}


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON atomically (a temporary sibling renamed into place: an interrupted run leaves the
    previous results whole). ``data`` gets ``load_average``: at the benchmark's start and now, at its end."""
    data["load_average"] = {"start": _STARTED["load_average"], "end": load_average()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # ours: the temporary file made just above
        raise


# The LLM benchmarks' tiny stand-in for a Llama (quick mode): grouped-query attention with 4 query heads per
# KV head (2 KV heads), SwiGLU FFN, tied embeddings. The vocabulary is each benchmark's to set.
TINY_LLAMA = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=128,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


# The LLM benchmarks' model and text (llm_quality, llm_reconstruct, llm_speed): the LLM demo's, or tiny stand-ins.
LLM_MODEL_NAME = "SmolLM2-135M-Instruct"


def demo_llm():
    """``examples/demo_llm.py`` as a module (its ``prepare_model`` / ``prepare_text`` are reused, not copied)."""
    spec = importlib.util.spec_from_file_location("demo_llm", ROOT / "examples" / "demo_llm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_text(path: Path, n_texts: int, seed: int) -> Path:
    """Tiny text for ``--quick``: sentences of the tiny tokenizer's words, one text per paragraph."""
    from hf_gradprune.testing import WORDS

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(n_texts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path


def tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A tiny random Llama (GQA) with a word-level tokenizer, saved in ``folder`` (once)."""
    from hf_gradprune.testing import save_tiny_tokenizer

    if not (folder / "config.json").exists():
        tokenizer = save_tiny_tokenizer(folder)
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TINY_LLAMA,
        )
        LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def model_and_text(quick: bool, work: Path, train_file=None, eval_file=None) -> tuple[Path, Path, Path, str]:
    """``(model folder, train text, held-out text, model name)``: the demo's, or the tiny stand-ins."""
    if quick:
        model_dir = tiny_llama(work / "tiny-llama")
        train_file = train_file or synthetic_text(work / "text" / "train.txt", 400, 0)
        eval_file = eval_file or synthetic_text(work / "text" / "eval.txt", 100, 1)
        return model_dir, Path(train_file), Path(eval_file), "tiny-llama (random, GQA)"
    demo = demo_llm()
    cache = ROOT / ".cache" / "demo-llm"
    model_dir = demo.prepare_model(cache)
    train, held_out = demo.prepare_text(cache)
    return model_dir, Path(train_file or train), Path(eval_file or held_out), LLM_MODEL_NAME


def token_blocks(tokenizer, path: Path, n_blocks: int, block_len: int) -> torch.Tensor:
    """The first ``n_blocks`` blocks of ``block_len`` tokens of ``path``: its paragraphs (texts), tokenized
    without special tokens and joined with the EOS token; ``[n_blocks, block_len]``."""
    need = n_blocks * block_len
    ids: list[int] = []
    with open(path, encoding="utf-8") as f:
        texts = [t for t in f.read().split("\n\n") if t.strip()]
    eos = tokenizer.eos_token_id
    for start in range(0, len(texts), 256):
        for row in tokenizer(texts[start : start + 256], add_special_tokens=False)["input_ids"]:
            ids += row + [eos]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"{path} has {len(ids)} tokens, fewer than {n_blocks} x {block_len}")
    return torch.tensor(ids[:need]).view(n_blocks, block_len)


@torch.inference_mode()
def perplexity(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """``exp`` of the mean next-token loss over ``blocks`` (every block has the same length)."""
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        b = blocks[i : i + batch_size]
        tokens = b.numel() - b.shape[0]  # next-token predictions in the batch
        nll += float(model(input_ids=b, labels=b).loss.double()) * tokens
        count += tokens
    model.train(was_training)
    return math.exp(nll / count)


def ffn_sparsity_for(g, target: float) -> float:
    """The ``ffn_sparsity`` that removes ``target`` of the block parameters with every head kept."""
    full = PruningPlan.full(g)
    half = PruningPlan(g, full.heads, [list(range(g.intermediate_size // 2))] * g.num_layers)
    return target * (g.intermediate_size // 2) / g.intermediate_size / half.params_removed()


def loader(dataset, start, count, batch_size, collator, seed=0):
    """Rows ``start`` to ``start + count`` of ``dataset`` shuffled with ``seed``, in batches."""
    rows = dataset.shuffle(seed=seed).select(range(start, min(start + count, len(dataset))))
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collator)
