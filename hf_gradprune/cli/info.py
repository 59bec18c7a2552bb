"""``hf-gradprune info FOLDER``: a saved folder's per-layer heads and FFN neurons, parameters, FLOPs, plan
history and weight sparsity (pattern, target, measured, method, how the weights are stored), from its config alone
(models built on the meta device)."""

from __future__ import annotations

import copy
import json
import os

from .inputs import NOT_PRUNED, CommandError, folder_config, one_line, positive_int

HELP = "a pruned folder's per-layer heads and FFN neurons, parameters, FLOPs, plan history and weight sparsity"
DESCRIPTION = (
    "Heads and FFN neurons each layer keeps (of how many), parameters and block FLOPs before and "
    "after, the plan history and the weight sparsity (pattern, target, measured, method, storage) of a saved "
    "folder. A dense folder prints 'not pruned' and its shape. Reads config.json only."
)


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
    from ..modeling_gradprune import BITMASK, CONFIG_KEY, FolderFormatError, gradprune_class
    from ..planning.plan import PruningPlan
    from ..sparsity.record import recorded_weight_sparsity
    from ..state import pruning_state
    from ..surgery import current_plan

    config = folder_config(folder)
    try:
        cls = resolve_model_class(config)
    except ValueError as e:
        raise CommandError(f"{folder}: {one_line(e)}") from e
    record = getattr(config, CONFIG_KEY, None) or {}
    try:
        sparse = recorded_weight_sparsity(config)
    except FolderFormatError as e:
        raise CommandError(f"{folder}: {one_line(e)}") from e
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
        # loads with plain from_pretrained, no remote code (bitmask weights need the shipped file)
        "stock": not record.get("structure") and (sparse or {}).get("storage") != BITMASK,
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
        "weight_sparsity": _sparsity_info(sparse),
    }


def _sparsity_info(sparse: dict | None) -> dict | None:
    if not sparse:
        return None
    keys = ("pattern", "sparsity", "measured", "method", "scope")
    return {
        **{k: sparse.get(k) for k in keys},
        "storage": sparse.get("storage", "dense"),
        "targets": len(sparse["targets"]),
        "target_names": list(sparse["targets"]),
    }


def _sparsity_line(ws: dict) -> str:
    measured = f"{ws['measured']:.1%}" if ws.get("measured") is not None else "not recorded"
    scope = f", {ws['scope']} scope" if ws.get("scope") else ""
    return (
        f"weight sparsity: {ws['pattern']} {ws['sparsity']:.1%} (measured {measured}) by {ws['method']}{scope}, "
        f"over {ws['targets']} matrices; stored {ws['storage']}"
        + (" (values + bitmask: load_pruned or trust_remote_code=True)" if ws["storage"] == "bitmask" else "")
    )


def _fraction_removed(before: int, after: int) -> str:
    return f"{1 - after / before:.1%} removed" if before else "-"


def format_info(info: dict) -> str:
    g = info["geometry"]
    title = f"{info['folder']}: {info['architecture']} ({info['model_type']})"
    ws = info.get("weight_sparsity")
    if not info["pruned"]:
        p, f = info["params"]["dense"], info["block_flops"]
        return "\n".join(
            [
                f"{title}, {'no units removed' if ws else NOT_PRUNED}",
                f"{g['num_layers']} layers, {g['num_heads']} heads ({g['num_key_value_heads']} key/value heads) and "
                f"{g['intermediate_size']} FFN neurons per layer",
                f"model parameters {p:,}",
                f"block GFLOPs per sequence of {f['seq_len']} {f['dense'] / 1e9:.3f}",
            ]
            + ([_sparsity_line(ws)] if ws else [])
        )
    p = info["params"]
    how = "a stock checkpoint" if info["stock"] else "remote code: modeling_gradprune.py"
    lines = [f"{title}, pruned {len(info['history'])} time(s); {how}", info["summary"]]
    lines.append(f"model parameters {p['dense']:,} -> {p['pruned']:,} ({_fraction_removed(p['dense'], p['pruned'])})")
    if ws:
        lines.append(_sparsity_line(ws))
    lines.append("history:")
    for i, step in enumerate(info["history"], 1):
        lines.append(f"  {i}. " + ", ".join(f"{k}={v}" for k, v in step.items()))
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="a folder saved by save_pretrained / save_pruned / hf-gradprune prune")
    parser.add_argument(
        "--seq_len", type=positive_int, default=None, help="sequence length of the FLOPs (default: the plan's)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def command(args) -> int:
    info = folder_info(args.folder, args.seq_len)
    if args.json:
        print(json.dumps({k: v for k, v in info.items() if k != "summary"}, indent=2))
    else:
        print(format_info(info))
    return 0
