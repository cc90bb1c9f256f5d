"""`medals weights import | list | path`: installing official weights and inspecting the model store."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import ModelConfig, NetConfig
from ..errors import InputError
from .install import install_official
from .store import available_models, default_model_name, models_dir, resolve_model


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


def describe_stages(config: ModelConfig) -> str:
    """E.g. 'coarse 224x224x128 @ 1.5x1.5x3 mm, fine 192x192x192 @ 1x1x1 mm' (crop and spacing in (h, w, d))."""
    parts = []
    for role, stage in sorted(config.stages.items()):
        crop = "x".join(str(size) for size in stage.crop_size)
        spacing = "x".join(f"{mm:g}" for mm in stage.target_spacing)
        parts.append(f"{role} {crop} @ {spacing} mm")
    return ", ".join(parts)


def read_plan(path: str | None) -> NetConfig | None:
    """A NetConfig from a JSON file of its fields (unset fields keep the official values)."""
    if path is None:
        return None
    try:
        return NetConfig.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"{path}: not a usable network plan ({error})") from None


def run_import(args) -> int:
    model = install_official(args.source, args.name, plan=read_plan(args.plan), allow_pickle=args.allow_pickle,
                             replace=args.replace, log=lambda message: print(message, file=sys.stderr))
    print(f"installed {model.name!r} in {model.path}")
    print(f"  stages: {describe_stages(model.config)}")
    print(f"  text tower: {model.config.text.tower} ({model.config.text.tokenization} tokenization)")
    print(f"  size: {human_size(model.size_bytes)}")
    return 0


def model_record(model) -> dict:
    """One model as `medals weights list --json` describes it."""
    return {"name": model.name, "path": str(model.path), "bundled": model.bundled,
            "stages": describe_stages(model.config), "text_tower": model.config.text.tower,
            "size_bytes": model.size_bytes}


def run_list(args) -> int:
    models = available_models()
    if args.json:
        print(json.dumps({"models_dir": str(models_dir()), "default": default_model_name(),
                          "models": [model_record(model) for model in models]}))
        return 0
    if not models:
        print(f"no models installed in {models_dir()}; install one with `medals weights import SOURCE`")
        return 0
    rows = [("NAME", "SOURCE", "STAGES", "TEXT TOWER", "SIZE")]
    rows += [(m.name, "bundled" if m.bundled else "installed", describe_stages(m.config), m.config.text.tower,
              human_size(m.size_bytes)) for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    default = default_model_name()
    print(f"default (no --model): {default}" if default else "several models installed: name one with --model")
    return 0


def run_path(args) -> int:
    print(resolve_model(args.name))
    return 0


def register(subparsers) -> None:
    weights = subparsers.add_parser("weights", help="import official weights, list installed models")
    commands = weights.add_subparsers(dest="weights_command", required=True)

    importer = commands.add_parser(
        "import", help="install official Medal S weights from a checkpoint folder or the Docker image archive")
    importer.add_argument("source", help="official checkpoint folder (stage .pth files, text_encoder.pth, "
                                         "BioLORD-2023-C/) or the `docker save` archive teamx_alldata.tar.gz")
    importer.add_argument("--name", default="official", help="name in the model store (default: official)")
    importer.add_argument("--replace", action="store_true", help="replace an installed model of that name")
    importer.add_argument("--plan", metavar="PLAN.json",
                          help="network widths as JSON NetConfig fields, for checkpoints trained with another "
                               "plan than the official one (crops and spacings still come from the file names)")
    importer.add_argument("--allow-pickle", action="store_true",
                          help="allow checkpoints that need full unpickling (runs code from the file: "
                               "only for files from a trusted source)")
    importer.set_defaults(func=run_import)

    lister = commands.add_parser("list", help="installed and bundled models: stages (crop @ spacing), text tower, "
                                              "size, and the one used when none is named")
    lister.add_argument("--json", action="store_true", help="as JSON (bundled: true for a model shipped inside "
                                                            "the package)")
    lister.set_defaults(func=run_list)

    path = commands.add_parser("path", help="print the folder of a model (installed or bundled)")
    path.add_argument("name")
    path.set_defaults(func=run_path)
