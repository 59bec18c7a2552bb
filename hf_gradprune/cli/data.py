"""The data of a pruning run: what ``examples/run_glue_prune.py``, ``examples/run_clm_prune.py`` and
``hf-gradprune prune`` read (their data arguments), how they load it and turn it into model inputs, and the
model and metrics that go with it (``prepare_classification``, ``prepare_causal_lm``).

Text classification follows transformers' ``run_glue.py`` (a GLUE task, or CSV/JSON files with text and label
columns); causal language modelling follows ``run_clm.py`` (texts tokenized, concatenated and cut into blocks
with labels = input_ids). A classification file without its label column is *unlabelled*: it can calibrate a
one-shot prune (``hf-gradprune prune``), not train one.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
from datasets import load_dataset

from .runs import ModelArguments, RunArguments

logger = logging.getLogger(__name__)

TEXT_CLASSIFICATION = "text-classification"
TEXT_GENERATION = "text-generation"
TASKS = (TEXT_CLASSIFICATION, TEXT_GENERATION)  # the Hub's pipeline tags, as optimum-cli's --task spells them

GLUE_TASK_KEYS = {
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
# file extension -> `datasets` builder
FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
CLASSIFICATION_FORMATS = (".csv", ".json", ".jsonl", ".txt")


class DataError(ValueError):
    """Data that cannot be used as the arguments describe it (a missing column, too little text, ...)."""


def _builder(path: str) -> str:
    return FILE_FORMATS[os.path.splitext(path)[1].lower()]


# ---------------------------------------------------------------------- text classification
@dataclass
class ClassificationDataArguments(RunArguments):
    """A GLUE task or CSV/JSON files (``run_glue.py``'s data arguments); a ``.txt`` file is unlabelled text."""

    task_name: str | None = field(default=None, metadata={"help": f"GLUE task: {', '.join(GLUE_TASK_KEYS)}."})
    dataset_name: str = field(default="nyu-mll/glue", metadata={"help": "Dataset holding the GLUE tasks."})
    train_file: str | None = field(
        default=None, metadata={"help": "CSV or JSON training file (instead of GLUE); .txt: unlabelled text."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "CSV or JSON validation file."})
    text_column: str | None = field(
        default=None,
        metadata={
            "help": "Text column(s) of the files, comma-separated for pairs: 'sentence1,sentence2' (.txt: 'text')."
        },
    )
    label_column: str = field(default="label", metadata={"help": "Label column of the files."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per example after truncation."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every example to max_seq_length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate each evaluation set."})

    def __post_init__(self):
        if self.task_name is None and self.train_file is None:
            raise ValueError("give --task_name (GLUE) or --train_file/--validation_file")
        if self.task_name is not None and self.task_name not in GLUE_TASK_KEYS:
            raise ValueError(f"unknown GLUE task {self.task_name!r}; choose one of {', '.join(GLUE_TASK_KEYS)}")
        for path in (self.train_file, self.validation_file):
            if path is not None and not path.lower().endswith(CLASSIFICATION_FORMATS):
                raise ValueError(f"{path}: data files must be .csv, .json or .jsonl (or .txt for unlabelled text)")


@dataclass
class ClassificationData:
    """Raw splits and how to read them; ``label_column`` None: the data has no labels."""

    train: object
    evals: dict  # name -> split
    text_keys: tuple[str, str | None]
    label_column: str | None
    is_regression: bool
    num_labels: int | None


def load_classification_data(
    data: ClassificationDataArguments, model_args: ModelArguments, *, labels_required: bool = True
) -> ClassificationData:
    """The GLUE task or the files of ``data``. Without ``labels_required``, files that lack the label column
    load as unlabelled text (``label_column`` None)."""
    if data.task_name is not None:
        raw = load_dataset(data.dataset_name, data.task_name, cache_dir=model_args.cache_dir)
        if data.task_name == "mnli":
            evals = {"matched": raw["validation_matched"], "mismatched": raw["validation_mismatched"]}
        else:
            evals = {"validation": raw["validation"]}
        is_regression = data.task_name == "stsb"
        num_labels = 1 if is_regression else raw["train"].features["label"].num_classes
        return ClassificationData(
            raw["train"], evals, GLUE_TASK_KEYS[data.task_name], "label", is_regression, num_labels
        )
    files = {"train": data.train_file}
    if data.validation_file:
        files["validation"] = data.validation_file
    builder = _builder(data.train_file)
    raw = load_dataset(builder, data_files=files, cache_dir=model_args.cache_dir)
    if builder == "text":  # the text builder names its one column "text"
        names = ["text"]
    elif data.text_column is None:
        raise DataError("with --train_file, say which column(s) hold the text: --text_column sentence[,sentence2]")
    else:
        names = [c.strip() for c in data.text_column.split(",")]
    label_column = data.label_column
    if not labels_required and (builder == "text" or label_column not in raw["train"].column_names):
        label_column = None
    for split in raw.values():
        missing = [c for c in (*names, *([label_column] if label_column else [])) if c not in split.column_names]
        if missing:
            raise DataError(f"columns {missing} are not in the data files (columns: {split.column_names})")
    evals = {"validation": raw["validation"]} if "validation" in raw else {}
    keys = (names[0], names[1] if len(names) > 1 else None)
    if label_column is None:
        return ClassificationData(raw["train"], evals, keys, None, False, None)
    labels = raw["train"][label_column]
    is_regression = isinstance(labels[0], float)
    num_labels = 1 if is_regression else len(set(labels))
    return ClassificationData(raw["train"], evals, keys, label_column, is_regression, num_labels)


def tokenize_classification(ds, tokenizer, data: ClassificationData, args: ClassificationDataArguments, limit=None):
    """``ds`` truncated to ``limit`` rows and tokenized (``labels`` when the data has them)."""
    key1, key2 = data.text_keys

    def preprocess(batch):
        texts = (batch[key1],) if key2 is None else (batch[key1], batch[key2])
        out = tokenizer(
            *texts,
            truncation=True,
            max_length=args.max_seq_length,
            padding="max_length" if args.pad_to_max_length else False,
        )
        if data.label_column is not None:
            out["labels"] = [float(x) if data.is_regression else int(x) for x in batch[data.label_column]]
        return out

    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.map(preprocess, batched=True, remove_columns=ds.column_names, desc="tokenizing")


# ---------------------------------------------------------------------- causal language modelling
@dataclass
class CausalLMDataArguments(RunArguments):
    """A Hub dataset or text files, cut into blocks (``run_clm.py``'s data arguments)."""

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
            if _builder(self.train_file) != _builder(self.validation_file):
                raise ValueError("--train_file and --validation_file must have the same format")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError("--validation_split_percentage must be in [0, 100)")


def load_causal_lm_data(data: CausalLMDataArguments, model_args: ModelArguments):
    """``(train, validation or None, text column)``; validation carved off train when there is none."""
    pct = data.validation_split_percentage
    if data.train_file is None:
        source, kwargs = data.dataset_name, {"name": data.dataset_config_name or None}
    else:
        files = {"train": data.train_file}
        if data.validation_file:
            files["validation"] = data.validation_file
        source = _builder(data.train_file)
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
            raise DataError(
                f"text column {column!r} is not in the {name} data (columns: {split.column_names}); set --text_column"
            )
    train, validation = raw["train"], raw.get("validation")
    if validation is None and pct > 0:
        # as run_clm.py (split="train[:pct%]"): the first pct% of train is validation, the rest is train
        n = len(train)
        k = n * pct // 100
        if k == 0:
            raise DataError(
                f"there is no validation split and {pct}% of the {n} training rows is none; "
                "give --validation_file or a larger --validation_split_percentage"
            )
        train, validation = train.select(range(k, n)), train.select(range(k))
    return train, validation, column


def resolve_block_size(data: CausalLMDataArguments, tokenizer, config) -> int:
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
            raise DataError(f"--block_size {block_size} is longer than the model's {positions} position embeddings")
    if block_size < 2:
        raise DataError("--block_size must be at least 2 (a next-token loss needs two tokens)")
    return block_size


def lm_blocks(ds, tokenizer, text_column: str, block_size: int, args: CausalLMDataArguments, split: str, limit=None):
    """Tokenize ``ds``, concatenate and cut into blocks of ``block_size`` (labels = input_ids; run_clm.py),
    then keep the first ``limit`` blocks."""

    def tokenize(batch):
        return tokenizer(batch[text_column])

    def group_texts(examples):
        # Concatenate everything and cut into block_size chunks; the remainder is dropped (run_clm.py).
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated[next(iter(examples))]) // block_size) * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    map_kw = dict(batched=True, num_proc=args.preprocessing_num_workers, load_from_cache_file=not args.overwrite_cache)
    ds = ds.map(tokenize, remove_columns=ds.column_names, desc=f"tokenizing {split}", **map_kw)
    ds = ds.map(group_texts, desc=f"grouping {split} into blocks of {block_size}", **map_kw)
    if len(ds) == 0:
        raise DataError(
            f"the {split} set is shorter than one block of {block_size} tokens; "
            "give more text or a smaller --block_size"
        )
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


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


def next_token_accuracy(p):
    """Next-token accuracy, as run_clm.py reports next to perplexity."""
    preds, labels = p.predictions, p.label_ids
    labels = labels[:, 1:].reshape(-1)  # the model predicts token t+1 at position t
    preds = preds[:, :-1].reshape(-1)
    mask = labels != -100
    return {"accuracy": float(np.mean(preds[mask] == labels[mask])) if mask.any() else 0.0}


# ---------------------------------------------------------------------- model + data, ready to run
@dataclass
class PreparedRun:
    """A model with its tokenizer and tokenized data: what ``cli.prune_and_report`` (training) or
    ``prune_oneshot`` (calibration) takes. ``labelled``: the training data has labels."""

    model: object
    tokenizer: object
    base_model: str  # the model id or folder it was loaded from (the model card's base_model)
    train_dataset: object
    eval_dataset: object  # None, a dataset, or a dict of named datasets
    data_collator: object
    labelled: bool
    results: dict  # what the run reports before it starts (metric source, block size, sample counts)
    card_dataset: str
    card_task: str
    latency_seq_len: int
    trainer_kwargs: dict = field(default_factory=dict)  # compute_metrics, preprocess_logits_for_metrics
    stage_extras: object = None

    def report_kwargs(self) -> dict:
        """``prune_and_report``'s keyword arguments for this run."""
        return dict(
            base_model=self.base_model,
            card_dataset=self.card_dataset,
            card_task=self.card_task,
            latency_seq_len=self.latency_seq_len,
            stage_extras=self.stage_extras,
            train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset,
            processing_class=self.tokenizer,
            data_collator=self.data_collator,
            **self.trainer_kwargs,
        )


def _tokenizer(model_args: ModelArguments):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path, cache_dir=model_args.cache_dir
    )


def prepare_classification(
    model_args: ModelArguments, data_args: ClassificationDataArguments, training_args, *, labels_required: bool = True
) -> PreparedRun:
    """``run_glue.py``'s setup: data, tokenizer, a sequence classifier with as many labels as the data, and
    GLUE metrics. Without ``labels_required``, unlabelled data gives a run with ``labelled`` False."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from ..reports.metrics import GlueMetric

    data = load_classification_data(data_args, model_args, labels_required=labels_required)
    tokenizer = _tokenizer(model_args)
    kwargs = {} if data.num_labels is None else {"num_labels": data.num_labels}
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **kwargs,
    )
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id

    def prepare(ds, limit):
        with training_args.main_process_first(desc="tokenizing"):
            return tokenize_classification(ds, tokenizer, data, data_args, limit)

    train_ds = prepare(data.train, data_args.max_train_samples)
    eval_ds = {name: prepare(ds, data_args.max_eval_samples) for name, ds in data.evals.items()}
    if data.label_column is None:  # unlabelled: nothing to evaluate against
        eval_ds = {}
    eval_arg = None if not eval_ds else (eval_ds["validation"] if list(eval_ds) == ["validation"] else eval_ds)
    metric = GlueMetric(data_args.task_name)

    def compute_metrics(p):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.squeeze(preds) if data.is_regression else np.argmax(preds, axis=1)
        return metric(preds, p.label_ids)

    return PreparedRun(
        model=model,
        tokenizer=tokenizer,
        train_dataset=train_ds,
        eval_dataset=eval_arg,
        data_collator=None if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        labelled=data.label_column is not None,
        results={"metric_source": metric.source},
        base_model=model_args.model_name_or_path,
        card_dataset=f"{data_args.dataset_name}/{data_args.task_name}" if data_args.task_name else "local files",
        card_task=TEXT_CLASSIFICATION,
        latency_seq_len=data_args.max_seq_length,
        trainer_kwargs={"compute_metrics": compute_metrics},
    )


def prepare_causal_lm(model_args: ModelArguments, data_args: CausalLMDataArguments, training_args) -> PreparedRun:
    """``run_clm.py``'s setup: texts, tokenizer, a causal LM, blocks of ``block_size`` tokens, perplexity and
    next-token accuracy."""
    from transformers import AutoModelForCausalLM, default_data_collator

    from ..architectures import get_adapter

    train_raw, eval_raw, text_column = load_causal_lm_data(data_args, model_args)
    tokenizer = _tokenizer(model_args)
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    get_adapter(model)  # an unsupported family fails now, not after tokenizing and dense training
    if getattr(model, "loss_type", None) is None:
        # transformers infers loss_type from the class name and "GPT2LMHeadModel" matches none, so Trainer
        # would count tokens over all labels instead of labels[..., 1:] and report the loss (L-1)/L too low.
        # The model's loss is ForCausalLM either way (its fallback); naming it fixes only the count.
        model.loss_type = "ForCausalLM"
    block_size = resolve_block_size(data_args, tokenizer, model.config)

    def prepare(ds, limit, split):
        with training_args.main_process_first(desc="tokenizing and grouping"):
            return lm_blocks(ds, tokenizer, text_column, block_size, data_args, split, limit)

    train_ds = prepare(train_raw, data_args.max_train_samples, "train")
    eval_ds = None if eval_raw is None else prepare(eval_raw, data_args.max_eval_samples, "validation")
    results: dict = {"block_size": block_size, "train_samples": len(train_ds)}
    if eval_ds is not None:
        results["eval_samples"] = len(eval_ds)
    else:
        logger.warning("no validation data (--validation_split_percentage 0): no perplexity will be reported")
    return PreparedRun(
        model=model,
        tokenizer=tokenizer,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=default_data_collator,
        labelled=True,  # the next token is the label
        results=results,
        base_model=model_args.model_name_or_path,
        card_dataset=data_args.dataset_name if data_args.train_file is None else "local files",
        card_task=TEXT_GENERATION,
        latency_seq_len=data_args.latency_seq_len or min(block_size, 128),
        trainer_kwargs={
            "compute_metrics": next_token_accuracy,
            "preprocess_logits_for_metrics": preprocess_logits_for_metrics,
        },
        stage_extras=lambda metrics, stage: {f"{stage}_perplexity": perplexity(metrics.get(f"{stage}_loss"))},
    )
