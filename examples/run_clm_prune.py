"""Prune a causal language model (GPT-2, or a Llama-family decoder: Llama, SmolLM, Mistral, Qwen2, Qwen3) on
wikitext (or your text files) with GradPruneTrainer.

Follows transformers' ``examples/pytorch/language-modeling/run_clm.py``: texts are tokenized, concatenated
and cut into blocks of ``--block_size`` tokens with labels = input_ids. Reports perplexity of the dense
model, of the pruned model before recovery (and, with ``--reconstruct true``, after layer-wise
reconstruction) and after recovery; writes ``all_results.json``, the Hub-ready
pruned folder with its model card, and a pruning report (JSON, heat map of heads kept, bar chart of FFN
neurons kept, measured dense-vs-pruned latency on this machine).

    python examples/run_clm_prune.py --config recipes/gpt2/wikitext-2.yaml
    python examples/run_clm_prune.py --model_name_or_path gpt2 --train_file train.txt \\
        --validation_file valid.txt --block_size 512 --head_sparsity 0.4 --ffn_sparsity 0.4 --output_dir out/clm
    accelerate launch --multi_gpu --num_processes 4 examples/run_clm_prune.py --config ...
    python examples/demo_llm.py   # SmolLM2-135M offline, recipes/smollm2/demo.yaml (make demo-llm)

Llama-family decoders: ``--uniform true`` keeps the same heads per key/value group, key/value heads and FFN width
in every layer, so the saved folder is a stock checkpoint (no remote code); ``--attention_unit kv_group`` removes
whole key/value groups instead of query heads within them.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator, set_seed

from hf_gradprune import GradPruneConfig
from hf_gradprune.architectures import get_adapter
from hf_gradprune.cli import ModelArguments, RunArguments, parse_args, prune_and_report

logger = logging.getLogger(__name__)

# file extension -> `datasets` builder
FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class DataTrainingArguments(RunArguments):
    dataset_name: str = field(
        default="Salesforce/wikitext",
        metadata={"help": "Dataset on the Hub (used unless --train_file is given)."},
    )
    dataset_config_name: str | None = field(
        default="wikitext-2-raw-v1",
        metadata={"help": "Configuration of the dataset (e.g. wikitext-103-raw-v1; '' for a dataset without any)."},
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": f"Training file instead of the Hub dataset: {', '.join(FILE_FORMATS)}."},
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation file, same formats."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text (json, parquet, csv)."})
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percent of the train split used for validation when there is no validation split."},
    )
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep line breaks when reading .txt files."})
    block_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per training block after concatenating the texts. "
            "Default: min(1024, the tokenizer's model_max_length, the model's position embeddings)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (blocks)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set (blocks)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenizing."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Redo tokenizing instead of using the cache."})
    latency_batch_sizes: str = field(default="1,8", metadata={"help": "Batch sizes of the latency comparison."})
    latency_seq_len: int | None = field(
        default=None, metadata={"help": "Sequence length of the latency comparison (default: min(block_size, 128))."}
    )

    def __post_init__(self):
        if self.train_file is None and self.validation_file is not None:
            raise ValueError("--validation_file needs --train_file too (or neither, to use --dataset_name)")
        for path in (self.train_file, self.validation_file):
            if path is None:
                continue
            ext = os.path.splitext(path)[1].lower()
            if ext not in FILE_FORMATS:
                raise ValueError(
                    f"{path}: unsupported file type {ext or '(no extension)'!r}; "
                    f"data files must be one of {', '.join(FILE_FORMATS)}"
                )
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such data file; check --train_file / --validation_file")
        if self.train_file and self.validation_file:
            formats = {FILE_FORMATS[os.path.splitext(p)[1].lower()] for p in (self.train_file, self.validation_file)}
            if len(formats) > 1:
                raise ValueError("--train_file and --validation_file must have the same format")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError("--validation_split_percentage must be in [0, 100)")


def load_raw(data: DataTrainingArguments, model_args: ModelArguments):
    """``(train, validation or None, text column)``; validation carved off train when there is none."""
    pct = data.validation_split_percentage
    if data.train_file is None:
        source, kwargs = data.dataset_name, {"name": data.dataset_config_name or None}
    else:
        files = {"train": data.train_file}
        if data.validation_file:
            files["validation"] = data.validation_file
        source = FILE_FORMATS[os.path.splitext(data.train_file)[1].lower()]
        kwargs = {"data_files": files}
        if source == "text":
            kwargs["keep_linebreaks"] = data.keep_linebreaks
    try:
        raw = load_dataset(source, cache_dir=model_args.cache_dir, **kwargs)
    except ConnectionError as e:
        if data.train_file is not None:
            raise
        raise ConnectionError(
            f"{e}. Loading {source} ({data.dataset_config_name}) needs the Hub or a cached copy; offline, give "
            "local text with --train_file (and --validation_file): .txt, .json, .jsonl, .parquet or .csv"
        ) from e
    column = "text" if source == "text" else data.text_column  # the text builder names its one column "text"
    for name, split in raw.items():
        if column not in split.column_names:
            raise ValueError(
                f"text column {column!r} is not in the {name} data (columns: {split.column_names}); set --text_column"
            )
    train, validation = raw["train"], raw.get("validation")
    if validation is None and pct > 0:
        # as run_clm.py (split="train[:pct%]"): the first pct% of train is validation, the rest is train
        n = len(train)
        k = n * pct // 100
        if k == 0:
            raise ValueError(
                f"there is no validation split and {pct}% of the {n} training rows is none; "
                "give --validation_file or a larger --validation_split_percentage"
            )
        train, validation = train.select(range(k, n)), train.select(range(k))
    return train, validation, column


def resolve_block_size(data: DataTrainingArguments, tokenizer, config) -> int:
    """run_clm.py's rule, plus a clear error past the model's position embeddings."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if data.block_size is None:
        block_size = min(1024, tokenizer.model_max_length, positions or 1024)
    else:
        if data.block_size > tokenizer.model_max_length:
            logger.warning(
                "block_size %d is more than the tokenizer's model_max_length %d; using %d",
                data.block_size,
                tokenizer.model_max_length,
                tokenizer.model_max_length,
            )
        block_size = min(data.block_size, tokenizer.model_max_length)
        if positions is not None and block_size > positions:
            raise ValueError(f"--block_size {block_size} is longer than the model's {positions} position embeddings")
    if block_size < 2:
        raise ValueError("--block_size must be at least 2 (a next-token loss needs two tokens)")
    return block_size


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def preprocess_logits_for_metrics(logits, labels):
    # keep only the argmax: full [N, L, vocab] logits would be gathered for the whole eval set
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def compute_metrics(p):
    """Next-token accuracy, as run_clm.py reports next to perplexity."""
    preds, labels = p.predictions, p.label_ids
    labels = labels[:, 1:].reshape(-1)  # the model predicts token t+1 at position t
    preds = preds[:, :-1].reshape(-1)
    mask = labels != -100
    return {"accuracy": float(np.mean(preds[mask] == labels[mask])) if mask.any() else 0.0}


def main(args: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args((ModelArguments, DataTrainingArguments, GradPruneConfig), args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    train_raw, eval_raw, text_column = load_raw(data_args, model_args)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path, cache_dir=model_args.cache_dir
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision
    )
    get_adapter(model)  # an unsupported family fails now, not after tokenizing and dense training
    if getattr(model, "loss_type", None) is None:
        # transformers infers loss_type from the class name and "GPT2LMHeadModel" matches none, so Trainer
        # would count tokens over all labels instead of labels[..., 1:] and report the loss (L-1)/L too low.
        # The model's loss is ForCausalLM either way (its fallback); naming it fixes only the count.
        model.loss_type = "ForCausalLM"
    block_size = resolve_block_size(data_args, tokenizer, model.config)

    def tokenize(batch):
        return tokenizer(batch[text_column])

    def group_texts(examples):
        # Concatenate everything and cut into block_size chunks; the remainder is dropped (run_clm.py).
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated[next(iter(examples))]) // block_size) * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    def prepare(ds, limit, split):
        map_kw = dict(batched=True, num_proc=data_args.preprocessing_num_workers)
        map_kw["load_from_cache_file"] = not data_args.overwrite_cache
        with training_args.main_process_first(desc="tokenizing and grouping"):
            ds = ds.map(tokenize, remove_columns=ds.column_names, desc=f"tokenizing {split}", **map_kw)
            ds = ds.map(group_texts, desc=f"grouping {split} into blocks of {block_size}", **map_kw)
        if len(ds) == 0:
            raise ValueError(
                f"the {split} set is shorter than one block of {block_size} tokens; "
                "give more text or a smaller --block_size"
            )
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        return ds

    train_ds = prepare(train_raw, data_args.max_train_samples, "train")
    eval_ds = None if eval_raw is None else prepare(eval_raw, data_args.max_eval_samples, "validation")

    results: dict = {"block_size": block_size, "train_samples": len(train_ds)}
    if eval_ds is not None:
        results["eval_samples"] = len(eval_ds)
    else:
        logger.warning("no validation data (--validation_split_percentage 0): no perplexity will be reported")
    return prune_and_report(
        model,
        training_args,
        data_args,
        results,
        base_model=model_args.model_name_or_path,
        card_dataset=data_args.dataset_name if data_args.train_file is None else "local files",
        card_task="text-generation",
        latency_seq_len=data_args.latency_seq_len or min(block_size, 128),
        stage_extras=lambda metrics, stage: {f"{stage}_perplexity": perplexity(metrics.get(f"{stage}_loss"))},
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )


if __name__ == "__main__":
    main()  # prints the summary tables; all_results.json holds every number
