"""Prune a BERT-family model on a GLUE task (or your CSV/JSON files) with GradPruneTrainer.

Follows transformers' ``examples/pytorch/text-classification/run_glue.py``. Evaluates the dense model,
the pruned model before recovery (and, with ``--reconstruct true``, after layer-wise reconstruction) and
after recovery; writes ``all_results.json``, the Hub-ready pruned
folder with its model card, and a pruning report (JSON, heat map of heads kept, bar chart of FFN
neurons kept, measured dense-vs-pruned latency on this machine).

    python examples/run_glue_prune.py --config recipes/bert-base-uncased/sst2.yaml
    python examples/run_glue_prune.py --model_name_or_path bert-base-uncased --task_name mrpc \\
        --dense_train_epochs 3 --head_sparsity 0.5 --ffn_sparsity 0.5 --output_dir out/mrpc
    accelerate launch --multi_gpu --num_processes 4 examples/run_glue_prune.py --config ...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    set_seed,
)

from hf_gradprune import GradPruneConfig, cli
from hf_gradprune.cli import parse_args, prune_and_report
from hf_gradprune.metrics import GlueMetric

logger = logging.getLogger(__name__)

TASK_KEYS = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}


@dataclass
class ModelArguments(cli.ModelArguments):
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classifier head whose label count differs from the data's."}
    )


@dataclass
class DataTrainingArguments(cli.RunArguments):
    task_name: str | None = field(default=None, metadata={"help": f"GLUE task: {', '.join(TASK_KEYS)}."})
    dataset_name: str = field(default="nyu-mll/glue", metadata={"help": "Dataset holding the GLUE tasks."})
    train_file: str | None = field(default=None, metadata={"help": "CSV or JSON training file (instead of GLUE)."})
    validation_file: str | None = field(default=None, metadata={"help": "CSV or JSON validation file."})
    text_column: str | None = field(
        default=None,
        metadata={"help": "Text column(s) of the files, comma-separated for pairs: 'sentence1,sentence2'."},
    )
    label_column: str = field(default="label", metadata={"help": "Label column of the files."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per example after truncation."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every example to max_seq_length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate each evaluation set."})

    def __post_init__(self):
        if self.task_name is None and self.train_file is None:
            raise ValueError("give --task_name (GLUE) or --train_file/--validation_file")
        if self.task_name is not None and self.task_name not in TASK_KEYS:
            raise ValueError(f"unknown GLUE task {self.task_name!r}; choose one of {', '.join(TASK_KEYS)}")
        for path in (self.train_file, self.validation_file):
            if path is not None and not path.endswith((".csv", ".json", ".jsonl")):
                raise ValueError(f"{path}: data files must be .csv, .json or .jsonl")


def load_raw(data: DataTrainingArguments, model_args: ModelArguments):
    if data.task_name is not None:
        raw = load_dataset(data.dataset_name, data.task_name, cache_dir=model_args.cache_dir)
        keys = TASK_KEYS[data.task_name]
        if data.task_name == "mnli":
            evals = {"matched": raw["validation_matched"], "mismatched": raw["validation_mismatched"]}
        else:
            evals = {"validation": raw["validation"]}
        is_regression = data.task_name == "stsb"
        label_column = "label"
        num_labels = 1 if is_regression else raw["train"].features["label"].num_classes
        return raw["train"], evals, keys, label_column, is_regression, num_labels
    files = {"train": data.train_file}
    if data.validation_file:
        files["validation"] = data.validation_file
    fmt = "csv" if data.train_file.endswith(".csv") else "json"
    raw = load_dataset(fmt, data_files=files, cache_dir=model_args.cache_dir)
    if data.text_column is None:
        raise ValueError("with --train_file, say which column(s) hold the text: --text_column sentence[,sentence2]")
    names = [c.strip() for c in data.text_column.split(",")]
    keys = (names[0], names[1] if len(names) > 1 else None)
    for split in raw.values():
        missing = [c for c in (*names, data.label_column) if c not in split.column_names]
        if missing:
            raise ValueError(f"columns {missing} are not in the data files (columns: {split.column_names})")
    labels = raw["train"][data.label_column]
    is_regression = isinstance(labels[0], float)
    num_labels = 1 if is_regression else len(set(labels))
    evals = {"validation": raw["validation"]} if "validation" in raw else {}
    return raw["train"], evals, keys, data.label_column, is_regression, num_labels


def main(args: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args((ModelArguments, DataTrainingArguments, GradPruneConfig), args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    train_raw, evals_raw, (key1, key2), label_column, is_regression, num_labels = load_raw(data_args, model_args)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path, cache_dir=model_args.cache_dir
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=num_labels,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id

    def preprocess(batch):
        texts = (batch[key1],) if key2 is None else (batch[key1], batch[key2])
        out = tokenizer(
            *texts,
            truncation=True,
            max_length=data_args.max_seq_length,
            padding="max_length" if data_args.pad_to_max_length else False,
        )
        out["labels"] = [float(x) if is_regression else int(x) for x in batch[label_column]]
        return out

    def prepare(ds, limit):
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        with training_args.main_process_first(desc="tokenizing"):
            return ds.map(preprocess, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    train_ds = prepare(train_raw, data_args.max_train_samples)
    eval_ds = {name: prepare(ds, data_args.max_eval_samples) for name, ds in evals_raw.items()}
    eval_arg = None if not eval_ds else (eval_ds["validation"] if list(eval_ds) == ["validation"] else eval_ds)

    metric = GlueMetric(data_args.task_name)

    def compute_metrics(p):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.squeeze(preds) if is_regression else np.argmax(preds, axis=1)
        return metric(preds, p.label_ids)

    collator = None if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)

    results: dict = {"metric_source": metric.source}
    return prune_and_report(
        model,
        training_args,
        data_args,
        results,
        base_model=model_args.model_name_or_path,
        card_dataset=f"{data_args.dataset_name}/{data_args.task_name}" if data_args.task_name else "local files",
        card_task="text-classification",
        latency_seq_len=data_args.max_seq_length,
        train_dataset=train_ds,
        eval_dataset=eval_arg,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )


if __name__ == "__main__":
    main()  # prints the summary tables; all_results.json holds every number
