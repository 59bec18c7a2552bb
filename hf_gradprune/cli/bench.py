"""``hf-gradprune bench FOLDER``: median forward latency of the dense model against the pruned folder on this
machine (``deploy.latency.latency_comparison``)."""

from __future__ import annotations

import json
import os

from .info import original_config
from .inputs import (
    NOT_PRUNED,
    CommandError,
    folder_config,
    model_config,
    model_folder,
    one_line,
    positive_int,
    positive_ints,
)

HELP = "latency of the dense model against the pruned one on this machine"
DESCRIPTION = (
    "Median forward latency of the dense model and the pruned folder on this machine "
    "(hf_gradprune.deploy.latency.latency_comparison). The dense model is by default one of the folder's original "
    "shape (recorded in its config) with random weights: the time of a forward pass does not depend on the "
    "weights' values. --dense gives a real one."
)


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
        return model_config(model_folder(name) if os.path.isdir(name) else name)
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


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="a pruned folder")
    parser.add_argument("--batch_sizes", type=positive_ints, default=[1, 32], help="comma-separated (default 1,32)")
    parser.add_argument("--seq_len", type=positive_int, default=64, help="tokens per sequence (default 64)")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed passes per measurement (default 10)")
    parser.add_argument("--dense", default=None, help="the dense model (Hub id or folder) instead of random weights")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def command(args) -> int:
    import torch

    from ..deploy.latency import latency_comparison
    from ..folders.checkpoint import resolve_model_class
    from ..folders.hub import load_pruned
    from ..modeling_gradprune import CONFIG_KEY

    config = folder_config(args.folder)
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
            raise CommandError(f"--dense {args.dense}: cannot load its weights: {one_line(e)}") from e
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
