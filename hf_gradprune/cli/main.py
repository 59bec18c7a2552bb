"""``hf-gradprune``: the command line, with subcommands in the manner of ``accelerate`` and ``huggingface-cli``.

    hf-gradprune prune --model_name_or_path M --task_name sst2 --flops_budget 0.5 --output_dir out
    hf-gradprune prune --model_name_or_path M --train_file texts.txt --oneshot --head_sparsity 0.5 --output_dir out
    hf-gradprune info out [--json]
    hf-gradprune bench out [--batch_sizes 1,32] [--seq_len 64] [--repeats 10] [--dense M] [--json]
    hf-gradprune export onnx out out-onnx [--int8] [--optimize] [--task ...] [--opset 18]
    hf-gradprune convert-v4 SRC DST [--overwrite]
    python -m hf_gradprune ...          (the same)

``prune`` parses the example scripts' dataclasses (``cli.ModelArguments``, the data arguments of ``data.py``,
``GradPruneConfig``) plus ``PruneArguments`` with ``cli.parse_args``, so every recipe works with
``--config`` here as in the scripts, and runs the scripts' own code.

Errors: what the user gave and the package refuses (a bad path, target, task, option, folder or data) is one
line on stderr, ``hf-gradprune <command>: error: ...``, and exit code 2, argparse's own code for bad usage.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
from dataclasses import dataclass, field

PROG = "hf-gradprune"
NOT_PRUNED = "not pruned"


class CommandError(ValueError):
    """Input the command refuses; reported as one line on stderr with exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """The package's own errors for bad input (imported here: ``--help`` stays light)."""
    from ..architectures import UnsupportedModelError
    from ..deploy.latency import LatencyTableError
    from ..folders.checkpoint import CheckpointError
    from ..oneshot.calibration import CalibrationError
    from ..planning.plan import PlanError
    from .data import DataError

    return (
        CommandError,
        PlanError,
        CalibrationError,
        CheckpointError,
        DataError,
        UnsupportedModelError,
        LatencyTableError,
    )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


# ---------------------------------------------------------------------- prune
@dataclass
class PruneArguments:
    """What ``hf-gradprune prune`` adds to the example scripts' arguments."""

    task: str | None = field(
        default=None,
        metadata={
            "help": "text-classification (GLUE or CSV/JSON files, as examples/run_glue_prune.py) or text-generation "
            "(text files or a Hub dataset cut into blocks, as examples/run_clm_prune.py). Default: "
            "text-classification with --task_name, else from the model's config (a causal LM: text-generation)."
        },
    )
    oneshot: bool = field(
        default=False,
        metadata={
            "help": "Prune without training: hf_gradprune.prune_oneshot on calibration batches of the training data "
            "(score, split the budget, prune, reconstruct), then save. A classifier whose data has no label column "
            "is always pruned this way. Its defaults are prune_oneshot's: --importance fisher, --reconstruct true, "
            "a flops/params budget split by calibration-loss search (--budget_split ratio|normalized instead); "
            "options given explicitly win."
        },
    )
    calibration_samples: int = field(
        default=512,
        metadata={"help": "One-shot: training examples (text-generation: blocks) to calibrate on."},
    )

    def __post_init__(self):
        from .data import TASKS

        if self.task is not None and self.task not in TASKS:
            raise CommandError(f"--task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if isinstance(self.calibration_samples, bool) or self.calibration_samples < 1:
            raise CommandError(f"--calibration_samples must be an integer >= 1, got {self.calibration_samples!r}")


PRUNE_DESCRIPTION = (
    "Prune a model on data to a target and save a Hub folder (config, weights, modeling_gradprune.py, tokenizer). "
    "With labels: the run of examples/run_glue_prune.py / run_clm_prune.py (evaluate, prune with "
    "GradPruneTrainer, recover by training, evaluate, save, report). With --oneshot, or a classifier on unlabelled "
    "text: prune_oneshot, no training. Give one target: --head_sparsity and/or --ffn_sparsity, or one of "
    "--flops_budget / --params_budget / --latency_budget. --config recipe.yaml gives "
    "defaults that flags override. The data options below are those of --task text-classification; "
    "`hf-gradprune prune --task text-generation --help` lists those of text-generation."
)


def _options_given(argv: list[str]) -> set[str]:
    """Option names set on the command line or in its ``--config`` recipe (not left at their defaults)."""
    from .runs import read_recipe

    # HfArgumentParser takes --output-dir for --output_dir too
    given = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        path = argv[argv.index("--config") + 1]
        if os.path.isfile(path):
            given |= set(read_recipe(path))
    return given


def _prune_task(argv: list[str]) -> str:
    """The task: ``--task``, else classification for a GLUE ``--task_name``, else the model's own kind."""
    import yaml

    from .data import TASKS, TEXT_CLASSIFICATION, TEXT_GENERATION
    from .runs import read_recipe

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("--config", "--task", "--task_name", "--model_name_or_path", "--cache_dir"):
        pre.add_argument(*dict.fromkeys((name, name.replace("_", "-"))))  # HfArgumentParser's dashed aliases too
    known, _ = pre.parse_known_args(argv)
    recipe = {}
    if known.config and os.path.isfile(known.config):
        try:
            recipe = read_recipe(known.config)
        except (ValueError, yaml.YAMLError):
            pass  # the full parse reports a bad recipe in its own words
    task = known.task or recipe.get("task")
    if task is not None:
        if task not in TASKS:
            raise CommandError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
        return task
    if known.task_name or recipe.get("task_name"):
        return TEXT_CLASSIFICATION
    model = known.model_name_or_path or recipe.get("model_name_or_path")
    if model is None or "-h" in argv or "--help" in argv:
        return TEXT_CLASSIFICATION  # the full parse asks for the model
    architectures = _model_config(model, known.cache_dir or recipe.get("cache_dir")).architectures or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return TEXT_GENERATION if causal else TEXT_CLASSIFICATION


def _model_config(model: str, cache_dir: str | None = None):
    from transformers import AutoConfig

    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise CommandError(f"{model} is not a model folder: it has no config.json")
    try:
        return AutoConfig.from_pretrained(model, cache_dir=cache_dir)
    except (OSError, ValueError) as e:  # transformers' words for a missing or unreadable model
        raise CommandError(f"cannot read the config of model {model!r}: {_one_line(e)}") from e


def prune_arguments(argv: list[str]):
    """``hf-gradprune prune``'s arguments: ``(task, model_args, data_args, training_args, prune_args, given)``,
    ``given`` the option names set on the command line or in the recipe. Checks them (and that the model's
    config reads) before anything is loaded."""
    from ..training.config import GradPruneConfig
    from .data import TEXT_CLASSIFICATION, CausalLMDataArguments, ClassificationDataArguments
    from .runs import ModelArguments, parse_args

    task = _prune_task(argv)
    data_class = ClassificationDataArguments if task == TEXT_CLASSIFICATION else CausalLMDataArguments
    types = (ModelArguments, data_class, GradPruneConfig, PruneArguments)
    try:
        model_args, data_args, training_args, prune_args = parse_args(
            types, argv, prog=f"{PROG} prune", description=PRUNE_DESCRIPTION
        )
    except (ValueError, OSError) as e:
        # raised by the argument dataclasses' own checks (targets, files, options): the input's fault
        raise CommandError(_one_line(e)) from e
    given = _options_given(argv)
    if "output_dir" not in given:
        raise CommandError("give --output_dir: the folder the pruned model is saved to")
    for path in (data_args.train_file, data_args.validation_file):
        if path is not None and not os.path.isfile(path):
            raise CommandError(f"{path}: no such data file; check --train_file / --validation_file")
    _model_config(model_args.model_name_or_path, model_args.cache_dir)  # a bad model fails before any data work
    return task, model_args, data_args, training_args, prune_args, given


def _prune(argv: list[str]) -> int:
    from transformers import set_seed

    from .data import TEXT_CLASSIFICATION, prepare_causal_lm, prepare_classification
    from .runs import prune_and_report

    task, model_args, data_args, training_args, prune_args, given = prune_arguments(argv)
    if prune_args.oneshot:
        oneshot_options(training_args, given)  # refuses what prune_oneshot cannot do before any loading
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    if task == TEXT_CLASSIFICATION:
        run = prepare_classification(model_args, data_args, training_args, labels_required=False)
    else:
        run = prepare_causal_lm(model_args, data_args, training_args)
    if not run.labelled and not prune_args.oneshot:
        print(
            f"{PROG} prune: the data has no label column {data_args.label_column!r}: pruning without training "
            "(one-shot, as --oneshot)",
            file=sys.stderr,
        )
    if prune_args.oneshot or not run.labelled:
        _prune_oneshot(run, training_args, prune_args, given)
    else:
        prune_and_report(run.model, training_args, data_args, run.results, **run.report_kwargs())
    return 0


def oneshot_options(training_args, given: set[str], model=None) -> dict:
    """``prune_oneshot``'s keyword arguments from the parsed ``GradPruneConfig``: its targets and plan options;
    importance, reconstruction and the budget split keep ``prune_oneshot``'s defaults unless ``given``. With a
    ``model``, a ``latency_budget``'s table is loaded or measured for it (``latency.latency_table_for``)."""
    options = dict(
        **training_args.plan_targets(),
        ranking=training_args.ranking,
        normalize_heads=training_args.normalize_head_scores,
        min_heads_per_layer=training_args.min_heads_per_layer,
        ffn_multiple_of=training_args.ffn_multiple_of,
        attention_unit=training_args.attention_unit,
        uniform=training_args.uniform,
        seq_len=training_args.flops_seq_len,
        bias_compensation=training_args.bias_compensation,
        reconstruct_batches=training_args.reconstruct_batches,
    )
    if training_args.balanced:
        options["balanced"] = True
    if training_args.latency_budget is not None and model is not None:
        from ..deploy.latency import latency_table_for

        options["latency_table"] = latency_table_for(
            model,
            training_args.latency_table,
            training_args.latency_table_batch_size,
            training_args.latency_table_seq_len,
        )
    if "importance" in given:
        options["method"] = training_args.importance
    if "reconstruct" in given:
        options["reconstruct"] = training_args.reconstruct
    if training_args.budget_split is not None:
        options["split"] = training_args.budget_split
    return options


def _prune_oneshot(run, training_args, prune_args: PruneArguments, given: set[str]) -> None:
    """``prune_oneshot`` on the first ``calibration_samples`` training examples, evaluated before and after when
    there is labelled evaluation data, saved with its tokenizer and ``oneshot_report.json``."""
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from ..folders.hub import save_pruned
    from ..modeling_gradprune import write_folder
    from ..oneshot.prune import prune_oneshot
    from ..reports.run_report import metric_rows, stage_columns, summary_table
    from ..surgery import summarize

    model = run.model.to(training_args.device)
    options = oneshot_options(training_args, given, model)
    train = run.train_dataset
    calibration = train.select(range(min(prune_args.calibration_samples, len(train))))
    loader = DataLoader(
        calibration,
        batch_size=training_args.per_device_train_batch_size,
        collate_fn=run.data_collator or default_data_collator,
    )
    evaluate = _evaluator(run, training_args)
    stages = {}
    if evaluate is not None:
        stages["dense"] = evaluate(model, "dense")
    model, report = prune_oneshot(model, loader, **options)
    after = "reconstructed" if report.reconstruction is not None else "pruned"  # run_report's stage names
    if evaluate is not None:
        stages[after] = evaluate(model, after)
    out = training_args.output_dir
    save_pruned(model, out, tokenizer=run.tokenizer)

    def write_report(folder: str) -> None:
        given_options = {k: v for k, v in options.items() if k != "latency_table"}  # the plan's meta has its key
        info = {"calibration_samples": len(calibration), "options": given_options, "metrics": stages}
        info.update(report.to_dict())
        with open(os.path.join(folder, "oneshot_report.json"), "w") as f:
            json.dump(info, f, indent=2, default=str)

    write_folder(out, write_report)  # atomic, next to the model's files (which it keeps)
    print(summarize(model, options["seq_len"]))
    if stages:
        columns = stage_columns(stages)
        keep = [0, *(i + 1 for i, stage in enumerate(columns) if stage in stages)]
        rows = [tuple(row[i] for i in keep) for row in metric_rows(stages)]
        print(summary_table(rows, ("metric", *(c for c in columns if c in stages))))
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    print(f"one-shot on {len(calibration)} calibration examples: {seconds}")
    print(f"saved {out}")


def _evaluator(run, training_args):
    """``evaluate(model, stage) -> metrics`` on the run's evaluation data with ``Trainer``, or None without
    labelled evaluation data."""
    if run.eval_dataset is None or not run.labelled:
        return None
    from transformers import Trainer

    def evaluate(model, stage: str) -> dict:
        trainer = Trainer(
            model=model,
            args=training_args,
            eval_dataset=run.eval_dataset,
            data_collator=run.data_collator,
            processing_class=run.tokenizer,
            **run.trainer_kwargs,
        )
        metrics = trainer.evaluate(metric_key_prefix=stage)
        if run.stage_extras is not None:
            metrics.update(run.stage_extras(metrics, stage))
        return metrics

    return evaluate


# ---------------------------------------------------------------------- folders
def model_folder(path: str) -> str:
    """``path`` if it is a folder with a ``config.json``, else a ``CommandError`` saying what it is."""
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such folder")
    if not os.path.isdir(path):
        raise CommandError(f"{path} is a file, not a model folder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CommandError(f"{path} is not a model folder: it has no config.json (save one with save_pretrained)")
    return path


def _folder_config(folder: str):
    from ..modeling_gradprune import CONFIG_KEY

    config = _model_config(model_folder(folder))
    if not getattr(config, CONFIG_KEY, None) and getattr(config, "pruned_heads", None):
        raise CommandError(
            f"{folder} was pruned by transformers v4 (config.json has pruned_heads): convert it first with "
            f"`{PROG} convert-v4 {folder} NEW_FOLDER`"
        )
    return config


def original_config(config):
    """A config of the model before any prune (the geometry ``config.gradprune`` records), without the pruning
    record and our ``auto_map``: a model built from it is the dense model of the original shape."""
    from ..architectures import Geometry, get_adapter
    from ..modeling_gradprune import CONFIG_KEY, auto_map_for

    dense = copy.deepcopy(config)
    record = getattr(config, CONFIG_KEY, None) or {}
    if not record.get("geometry"):
        return dense
    geometry = Geometry(**record["geometry"])
    adapter = get_adapter(geometry.model_type)
    setattr(dense, adapter.ffn_config_attr, geometry.intermediate_size)
    for name, value in (
        adapter.uniform_head_config(geometry, geometry.num_heads, geometry.num_key_value_heads) or {}
    ).items():
        setattr(dense, name, value)
    delattr(dense, CONFIG_KEY)
    if getattr(dense, "auto_map", None) == auto_map_for(geometry.model_type):
        del dense.auto_map
    return dense


def _meta_model(config, cls):
    import torch

    with torch.device("meta"):
        return cls(config)


def folder_info(folder: str, seq_len: int | None = None) -> dict:
    """What ``hf-gradprune info`` reports, as data: per-layer units kept, parameters and FLOPs before and after,
    the plan history. Reads the config only (models are built on the meta device, no weights loaded)."""
    from ..folders.checkpoint import resolve_model_class
    from ..modeling_gradprune import CONFIG_KEY, gradprune_class
    from ..planning.plan import PruningPlan
    from ..state import pruning_state
    from ..surgery import current_plan

    config = _folder_config(folder)
    try:
        cls = resolve_model_class(config)
    except ValueError as e:
        raise CommandError(f"{folder}: {_one_line(e)}") from e
    record = getattr(config, CONFIG_KEY, None) or {}
    pruned = bool(record.get("geometry"))
    model = _meta_model(config, gradprune_class(cls) if record.get("structure") else cls)
    plan = current_plan(model)
    dense = _meta_model(original_config(config), cls)
    if pruning_state(dense).geometry != plan.geometry:
        raise RuntimeError(f"the original config of {folder} rebuilds another geometry than its record")
    full = PruningPlan.full(plan.geometry)
    seq_len = seq_len or plan.meta.get("seq_len") or 128
    g = plan.geometry
    layers = [
        {"layer": i, "heads": len(h), "kv_heads": len(plan.kv_heads(i)), "ffn_neurons": len(n)}
        for i, (h, n) in enumerate(zip(plan.heads, plan.neurons))
    ]
    return {
        "folder": os.path.abspath(folder),
        "architecture": cls.__name__,
        "model_type": config.model_type,
        "pruned": pruned,
        "stock": not record.get("structure"),  # loads with plain from_pretrained, no remote code
        "geometry": g.to_dict(),
        "layers": layers,
        "heads": {"dense": full.num_heads, "pruned": plan.num_heads},
        "kv_heads": {"dense": full.num_kv_heads, "pruned": plan.num_kv_heads},
        "ffn_neurons": {"dense": full.num_neurons, "pruned": plan.num_neurons},
        "params": {
            "dense": sum(p.numel() for p in dense.parameters()),
            "pruned": sum(p.numel() for p in model.parameters()),
        },
        "block_params": {"dense": full.block_params(), "pruned": plan.block_params()},
        "block_flops": {"seq_len": seq_len, "dense": full.block_flops(seq_len), "pruned": plan.block_flops(seq_len)},
        "history": list(record.get("history", [])),
        "summary": plan.summary(seq_len) if pruned else None,
    }


def _fraction_removed(before: int, after: int) -> str:
    return f"{1 - after / before:.1%} removed" if before else "-"


def format_info(info: dict) -> str:
    g = info["geometry"]
    title = f"{info['folder']}: {info['architecture']} ({info['model_type']})"
    if not info["pruned"]:
        p, f = info["params"]["dense"], info["block_flops"]
        return "\n".join(
            [
                f"{title}, {NOT_PRUNED}",
                f"{g['num_layers']} layers, {g['num_heads']} heads ({g['num_key_value_heads']} key/value heads) and "
                f"{g['intermediate_size']} FFN neurons per layer",
                f"model parameters {p:,}",
                f"block GFLOPs per sequence of {f['seq_len']} {f['dense'] / 1e9:.3f}",
            ]
        )
    p = info["params"]
    how = "a stock checkpoint" if info["stock"] else "remote code: modeling_gradprune.py"
    lines = [f"{title}, pruned {len(info['history'])} time(s); {how}", info["summary"]]
    lines.append(f"model parameters {p['dense']:,} -> {p['pruned']:,} ({_fraction_removed(p['dense'], p['pruned'])})")
    lines.append("history:")
    for i, step in enumerate(info["history"], 1):
        lines.append(f"  {i}. " + ", ".join(f"{k}={v}" for k, v in step.items()))
    return "\n".join(lines)


def _info(args) -> int:
    info = folder_info(args.folder, args.seq_len)
    if args.json:
        print(json.dumps({k: v for k, v in info.items() if k != "summary"}, indent=2))
    else:
        print(format_info(info))
    return 0


# ---------------------------------------------------------------------- bench
def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, e.g. 1,32; got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _torch_device(text: str | None):
    """``--device`` as a device this machine has; by default CUDA where available, else the CPU."""
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {text!r} is not a torch device: give e.g. cpu, cuda or cuda:1") from None
    if device.type == "cpu":
        return device
    # torch.accelerator (torch >= 2.6) says which accelerator this machine has, and how many
    have = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if have is None or have.type != device.type:
        found = f"its accelerator is {have.type}" if have is not None else "torch finds no accelerator on it"
        raise CommandError(f"--device {text}: this machine has no {device.type} device ({found}); use --device cpu")
    count = torch.accelerator.device_count()
    if device.index is not None and device.index >= count:
        raise CommandError(f"--device {text}: this machine has {count} {device.type} device(s), numbered from 0")
    return device


def _dense_config(name: str):
    """The config of ``bench --dense``: a model folder, else a Hub id; a ``CommandError`` if neither reads."""
    if os.path.exists(name) and not os.path.isdir(name):
        raise CommandError(f"--dense {name} is a file: give a model folder or a Hub model id")
    if not os.path.exists(name) and (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1):
        raise CommandError(f"--dense {name}: no such folder; give the dense model's folder or its Hub id")
    try:
        return _model_config(model_folder(name) if os.path.isdir(name) else name)
    except CommandError as e:
        raise CommandError(f"--dense: {e}") from e


def _original_geometry(config):
    """The shape of the model before any prune: the one ``config.gradprune`` records, else the config's own."""
    from ..architectures import Geometry, get_adapter
    from ..modeling_gradprune import CONFIG_KEY

    record = getattr(config, CONFIG_KEY, None) or {}
    if record.get("geometry"):
        return Geometry(**record["geometry"])
    return get_adapter(config.model_type).geometry(config)


def _bench(args) -> int:
    import torch

    from ..deploy.latency import latency_comparison
    from ..folders.checkpoint import resolve_model_class
    from ..folders.hub import load_pruned
    from ..modeling_gradprune import CONFIG_KEY

    config = _folder_config(args.folder)
    if not (getattr(config, CONFIG_KEY, None) or {}).get("geometry") and args.dense is None:
        raise CommandError(f"{args.folder} is {NOT_PRUNED}: there is no dense model to compare it with (--dense)")
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and args.seq_len > positions:
        raise CommandError(f"--seq_len {args.seq_len} is longer than the model's {positions} position embeddings")
    device = _torch_device(args.device)
    if args.dense is not None:  # a missing, unreadable or other dense model fails before anything loads
        have, want = _original_geometry(_dense_config(args.dense)), _original_geometry(config)
        if have != want:
            raise CommandError(
                f"--dense {args.dense} is not the dense model of {args.folder}: its shape is {have.to_dict()}, the "
                f"folder was pruned from {want.to_dict()}; give the model it was pruned from, or leave --dense out"
            )
    pruned = load_pruned(args.folder).to(device).eval()
    if args.dense is None:
        # random weights: the time of a forward pass does not depend on the weights' values
        torch.manual_seed(0)
        dense = resolve_model_class(config)(original_config(config))
        reference = "random weights, the original shape"
    elif os.path.isdir(args.dense):
        dense, reference = load_pruned(args.dense), args.dense
    else:
        try:
            dense, reference = resolve_model_class(config).from_pretrained(args.dense), args.dense
        except OSError as e:  # transformers' words for weights it cannot find or read
            raise CommandError(f"--dense {args.dense}: cannot load its weights: {_one_line(e)}") from e
    dense = dense.to(device=device, dtype=pruned.dtype).eval()
    rows = latency_comparison(dense, pruned, args.batch_sizes, args.seq_len, args.repeats)
    if args.json:
        print(json.dumps({"folder": os.path.abspath(args.folder), "dense": reference, "latency": rows}, indent=2))
        return 0
    first = rows[0]
    print(
        f"{args.folder} against the dense model ({reference}), on {first['device_name']} ({first['device']}, "
        f"{first['torch_threads']} threads, {first['dtype']}), median of {args.repeats} forward passes"
    )
    print("| batch | seq_len | dense ms | pruned ms | speedup |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['batch_size']} | {r['seq_len']} | {r['dense_ms']:.3f} | {r['pruned_ms']:.3f} | {r['speedup']:.2f}x |"
        )
    return 0


# ---------------------------------------------------------------------- export, convert-v4
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def _export_onnx(args) -> int:
    model_folder(args.folder)
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise CommandError(f"{args.out} exists and is not empty: give --overwrite to replace its export")
    try:
        from ..deploy.onnx_export import OnnxExportError, export_onnx
    except ModuleNotFoundError as e:
        if e.name == f"{__package__.rpartition('.')[0]}.deploy.onnx_export":
            raise CommandError(
                "this hf_gradprune has no ONNX export (hf_gradprune.deploy.onnx_export is missing)"
            ) from e
        raise
    try:
        report = export_onnx(
            args.folder,
            args.out,
            task=args.task,
            opset=args.opset,
            exporter=args.exporter,
            int8=args.int8,
            optimize=args.optimize,
            atol=args.atol,
            overwrite=args.overwrite,
        )
    except ImportError as e:  # the onnx packages: export_onnx names the pip command
        raise CommandError(_one_line(e)) from e
    except (OnnxExportError, ValueError, NotADirectoryError) as e:
        # export_onnx's own checks: a task, exporter, opset or tolerance it refuses (ValueError, checked before it
        # loads anything), a model it cannot export or whose graph disagrees with torch, OUT being a file

        raise CommandError(_one_line(e)) from e
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"wrote {report.out_dir} ({report.task}, opset {report.opset}, {report.exporter}) in {report.seconds:.1f} s")
    for name, path, diff in (
        ("fp32", report.onnx_path, report.max_abs_diff),
        ("optimized", report.optimized_path, report.optimized_max_abs_diff),
        ("int8", report.int8_path, report.int8_max_abs_diff),
    ):
        if path is not None:
            parity = "not checked" if diff is None else f"max |onnxruntime - torch| = {diff:.2e}"
            print(f"  {name:>9}: {os.path.basename(path)}, {parity}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


CONVERT_V4_DESCRIPTION = (
    "Convert a folder saved by transformers v4 after model.prune_heads(...) (config.json has pruned_heads) into "
    "an hf_gradprune folder that transformers v5 loads with trust_remote_code=True."
)


def _convert_v4_arguments(parser) -> None:
    """The command's arguments, on ``hf-gradprune``'s ``convert-v4`` parser."""
    parser.add_argument("src", help="the v4 folder (config.json with pruned_heads, and its weights)")
    parser.add_argument("dst", help="the folder to write; must not exist or be empty unless --overwrite")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into DST even if it is not empty: the model's files are replaced, other files are kept",
    )
    parser.add_argument(
        "--model_class",
        "--model-class",
        dest="model_class",
        default=None,
        help="transformers class to load as (default: config.json's architectures), e.g. BertModel",
    )


def _convert_v4(args) -> int:
    """Convert ``args.src`` into ``args.dst``; bad input raises ``command_line.CommandError``."""
    import transformers

    from ..folders.v4_compat import convert_v4_checkpoint

    model_class = None
    if args.model_class:
        model_class = getattr(transformers, args.model_class, None)
        if not isinstance(model_class, type):
            raise CommandError(f"transformers has no class {args.model_class!r} (--model_class)")
    try:
        dst = convert_v4_checkpoint(args.src, args.dst, model_class=model_class, overwrite=args.overwrite)
    except (ValueError, OSError) as err:  # bad input (CheckpointError is a ValueError): one line, no traceback
        raise CommandError(f"{' '.join(str(err).split())} (nothing was written)") from err
    print(f"wrote {dst}")
    return 0


# ---------------------------------------------------------------------- the parser
class OneLineErrorParser(argparse.ArgumentParser):
    """A usage error is one line (``prog: error: ...``), without the usage block; exit code 2 as argparse."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each (sub)command's parser by its name (``"export onnx"`` for the nested one)."""
    parser = OneLineErrorParser(
        prog=PROG,
        description="Gradient-based structured pruning of transformers models (attention heads, FFN neurons).",
        epilog=f"`{PROG} <command> --help` describes a command. Bad input: one line on stderr, exit code 2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    parsers = {}

    # its options are the example scripts' dataclasses, parsed by cli.parse_args (see _prune)
    parsers["prune"] = commands.add_parser(
        "prune",
        add_help=False,
        help="prune a model on data to a target; save a Hub folder",
        description=PRUNE_DESCRIPTION,
    )

    info = commands.add_parser(
        "info",
        help="a pruned folder's per-layer heads and FFN neurons, parameters, FLOPs and plan history",
        description="Heads and FFN neurons each layer keeps (of how many), parameters and block FLOPs before and "
        "after, and the plan history of a saved folder. A dense folder prints 'not pruned' and its shape. "
        "Reads config.json only.",
    )
    info.add_argument("folder", help="a folder saved by save_pretrained / save_pruned / hf-gradprune prune")
    info.add_argument(
        "--seq_len", type=_positive_int, default=None, help="sequence length of the FLOPs (default: the plan's)"
    )
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)
    parsers["info"] = info

    bench = commands.add_parser(
        "bench",
        help="latency of the dense model against the pruned one on this machine",
        description="Median forward latency of the dense model and the pruned folder on this machine "
        "(hf_gradprune.deploy.latency.latency_comparison). The dense model is by default one of the folder's original "
        "shape (recorded in its config) with random weights: the time of a forward pass does not depend on the "
        "weights' values. --dense gives a real one.",
    )
    bench.add_argument("folder", help="a pruned folder")
    bench.add_argument("--batch_sizes", type=_positive_ints, default=[1, 32], help="comma-separated (default 1,32)")
    bench.add_argument("--seq_len", type=_positive_int, default=64, help="tokens per sequence (default 64)")
    bench.add_argument("--repeats", type=_positive_int, default=10, help="timed passes per measurement (default 10)")
    bench.add_argument("--dense", default=None, help="the dense model (Hub id or folder) instead of random weights")
    bench.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.set_defaults(func=_bench)
    parsers["bench"] = bench

    export = commands.add_parser(
        "export", help="export a folder to another format (onnx)", description="Export a saved folder."
    )
    formats = export.add_subparsers(dest="format", metavar="<format>", required=True)
    onnx = formats.add_parser(
        "onnx",
        help="ONNX, checked against ONNX Runtime",
        description="Export a pruned (or dense) folder to ONNX with hf_gradprune.deploy.onnx_export.export_onnx: "
        'model.onnx, checked against torch on ONNX Runtime (needs pip install "hf_gradprune[onnx]").',
    )
    onnx.add_argument("folder", help="the folder to export")
    onnx.add_argument("out", help="the folder to write (must not exist or be empty unless --overwrite)")
    onnx.add_argument("--task", default=None, help="e.g. sequence-classification, causal-lm (default: the model's)")
    onnx.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default 18)")
    onnx.add_argument("--exporter", default="dynamo", help="dynamo (default) or torchscript")
    onnx.add_argument("--int8", action="store_true", help="also model_quantized.onnx (dynamic int8 weights)")
    onnx.add_argument("--optimize", action="store_true", help="also model_optimized.onnx (ONNX Runtime fusions)")
    onnx.add_argument("--atol", type=float, default=1e-4, help="parity tolerance against torch (default 1e-4)")
    onnx.add_argument("--overwrite", action="store_true", help="replace a previous export in OUT (other files stay)")
    onnx.add_argument("--json", action="store_true", help="print the export report as JSON")
    onnx.set_defaults(func=_export_onnx)
    parsers["export"] = export
    parsers["export onnx"] = onnx

    convert = commands.add_parser(
        "convert-v4", help="convert a transformers-v4 pruned folder", description=CONVERT_V4_DESCRIPTION
    )
    _convert_v4_arguments(convert)
    convert.set_defaults(func=_convert_v4)
    parsers["convert-v4"] = convert
    return parser, parsers


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hf_gradprune")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-gradprune`` on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, parsers = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        name = args.command if args.command != "export" else f"export {args.format}"
        if args.command == "prune":
            return _run(name, _prune, argv[argv.index("prune") + 1 :])
        if rest:
            parsers[name].error(f"unrecognized arguments: {' '.join(rest)}")
        return _run(name, args.func, args)
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 1


def _run(name: str, func, arg) -> int:
    try:
        return func(arg)
    except _user_errors() as e:
        print(f"{PROG} {name}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
