"""``hf-gradprune export onnx FOLDER OUT``: ``deploy.onnx_export.export_onnx`` on a saved folder, its refusals
as one line."""

from __future__ import annotations

import json
import os

from .inputs import CommandError, model_folder, one_line, positive_int

HELP = "ONNX, checked against ONNX Runtime"
DESCRIPTION = (
    "Export a pruned (or dense) folder to ONNX with hf_gradprune.deploy.onnx_export.export_onnx: "
    'model.onnx, checked against torch on ONNX Runtime (needs pip install "hf_gradprune[onnx]").'
)


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="the folder to export")
    parser.add_argument("out", help="the folder to write (must not exist or be empty unless --overwrite)")
    parser.add_argument("--task", default=None, help="e.g. sequence-classification, causal-lm (default: the model's)")
    parser.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--exporter", default="dynamo", help="dynamo (default) or torchscript")
    parser.add_argument("--int8", action="store_true", help="also model_quantized.onnx (dynamic int8 weights)")
    parser.add_argument("--optimize", action="store_true", help="also model_optimized.onnx (ONNX Runtime fusions)")
    parser.add_argument("--atol", type=float, default=1e-4, help="parity tolerance against torch (default 1e-4)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in OUT (other files stay)")
    parser.add_argument("--json", action="store_true", help="print the export report as JSON")


def command(args) -> int:
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
        raise CommandError(one_line(e)) from e
    except (OnnxExportError, ValueError, NotADirectoryError) as e:
        # export_onnx's own checks: a task, exporter, opset or tolerance it refuses (ValueError, checked before it
        # loads anything), a model it cannot export or whose graph disagrees with torch, OUT being a file

        raise CommandError(one_line(e)) from e
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
