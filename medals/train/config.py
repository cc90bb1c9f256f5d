"""The training configuration: one JSON file says what to train on, which networks, and how.

```
{"name": "medals-demo", "description": "...",
 "dataset": "build/demo-data",            folder with dataset.json (relative paths: from the working directory)
 "output": "runs/demo",                   checkpoint, log and the exported model folder
 "model_card": "configs/demo-model-card.md",   optional Markdown copied into the model folder as MODEL_CARD.md
 "text": {TextConfig fields}, "text_tower": "all-MiniLM-L6-v2" or a Hugging Face folder,
 "train_text_head": true,                 train the text projection + modality embedding (the tower stays frozen)
 "init_from": null,                       or an installed model / model folder to fine-tune (then "text" and each
                                          stage's "net" may be left out: they are the model's)
 "orientation": "RAS",                    optional: turn every case to this array orientation (medals.orientation)
                                          and record it in the model, so inference turns images to it too; a
                                          fine-tuned model's own orientation when left out
 "stages": {"coarse": {"net": {NetConfig fields}, "target_spacing": [3, 3, 3], "batch_size": 2}, "fine": {...}},
 "optimizer": {"cycles": [{"steps": 2000, "warmup": 100, "peak_lr": 3e-4}], "weight_decay": 0.01,
               "grad_clip_norm": 12.0},
 "augmentation": {"spatial": {...}, "intensity": {...}},   SpatialAugmentation / IntensityAugmentation fields
 "prompt_simulation": {...}, "queries": {"max_queries": 32, "negative_ratio": 0.33},
 "precision": "auto", "seed": 0, "checkpoint_every": 100, "log_every": 10}
```

Every stage network is trained with deep supervision; spatial tuples are in network order (h, w, d).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import NetConfig, TextConfig
from ..errors import InputError
from ..orientation import check_code
from .batches import SampleSettings
from .intensity import IntensityAugmentation
from .prompt_simulation import PromptSimulation
from .queries import QuerySampling
from .schedule import Cycle, total_steps
from .spatial import SpatialAugmentation

STAGE_NAMES = ("coarse", "fine")
PRECISIONS = ("auto", "fp32")


@dataclass(frozen=True)
class StageTraining:
    """One stage to train: its network plan (None: the initial model's), working spacing (mm) and batch size."""

    net: NetConfig | None
    target_spacing: tuple[float, float, float] | None
    batch_size: int = 2


@dataclass(frozen=True)
class Optimisation:
    """AdamW over the trainable parameters with the cycles of `schedule.learning_rate`."""

    cycles: tuple[Cycle, ...] = (Cycle(1000, 100, 1e-4),)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip_norm: float | None = None

    @property
    def steps(self) -> int:
        return total_steps(self.cycles)


@dataclass(frozen=True)
class TrainConfig:
    name: str
    dataset: Path
    output: Path
    stages: dict[str, StageTraining]
    description: str = ""
    model_card: Path | None = None
    text: TextConfig | None = None
    text_tower: str | None = None
    train_text_head: bool = False
    init_from: str | None = None
    orientation: str | None = None
    optimizer: Optimisation = field(default_factory=Optimisation)
    sampling: SampleSettings = field(default_factory=SampleSettings)
    precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10

    def to_dict(self) -> dict:
        """JSON-able form (stored in checkpoints, compared on resume)."""
        def plain(value):
            if dataclasses.is_dataclass(value):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, Path):
                return str(value)
            return value
        return plain(self)


def _build(cls, values, where: str):
    """cls(**values) with lists turned into tuples; unknown or invalid fields → InputError naming them."""
    if not isinstance(values, dict):
        raise InputError(f"{where} must be an object, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as error:
        raise InputError(f"{where}: {error}") from None


def _stage(name: str, values, where: str, fine_tuning: bool) -> StageTraining:
    where = f"{where}: stage {name!r}"
    if name not in STAGE_NAMES:
        raise InputError(f"{where}: stage names are {', '.join(STAGE_NAMES)}")
    values = dict(values) if isinstance(values, dict) else values
    if not isinstance(values, dict):
        raise InputError(f"{where} must be an object")
    net = values.pop("net", None)
    if net is not None:
        net = _build(NetConfig, net, f"{where} net")
    elif not fine_tuning:
        raise InputError(f"{where}: missing 'net' (only a stage fine-tuned from a model may leave it out)")
    spacing = values.pop("target_spacing", None)
    if spacing is None and not fine_tuning:
        raise InputError(f"{where}: missing 'target_spacing'")
    if spacing is not None:
        if not (isinstance(spacing, list) and len(spacing) == 3 and all(
                isinstance(s, (int, float)) and s > 0 for s in spacing)):
            raise InputError(f"{where}: target_spacing must be three positive numbers (h, w, d) in mm")
        spacing = tuple(float(s) for s in spacing)
    stage = _build(StageTraining, {**values, "net": net, "target_spacing": spacing}, where)
    if not isinstance(stage.batch_size, int) or stage.batch_size < 1:
        raise InputError(f"{where}: batch_size must be a positive integer")
    return stage


def _optimisation(values, where: str) -> Optimisation:
    values = dict(values)
    cycles = values.pop("cycles", None)
    if cycles is not None:
        if not isinstance(cycles, list) or not cycles:
            raise InputError(f"{where}: cycles must be a non-empty list of {{steps, warmup, peak_lr}}")
        values["cycles"] = [_build(Cycle, c, f"{where} cycle {k + 1}") for k, c in enumerate(cycles)]
    return _build(Optimisation, values, where)


def parse_config(values: dict, where: str = "config") -> TrainConfig:
    """A TrainConfig from its JSON object; InputError (one line) naming the first problem."""
    if not isinstance(values, dict):
        raise InputError(f"{where} must be a JSON object")
    values = dict(values)
    for required in ("name", "dataset", "output", "stages"):
        if required not in values:
            raise InputError(f"{where}: missing field {required!r}")
    fine_tuning = values.get("init_from") is not None
    raw_stages = values.pop("stages")
    if not isinstance(raw_stages, dict) or not raw_stages:
        raise InputError(f"{where}: stages must name at least one of {', '.join(STAGE_NAMES)}")
    stages = {name: _stage(name, v, where, fine_tuning) for name, v in raw_stages.items()}
    text = values.pop("text", None)
    if text is not None:
        text = _build(TextConfig, text, f"{where} text")
    elif not fine_tuning:
        raise InputError(f"{where}: missing 'text' (only fine-tuning from a model may leave it out)")
    if not fine_tuning and not values.get("text_tower"):
        raise InputError(f"{where}: missing 'text_tower' (a packaged tower name or a Hugging Face folder)")
    optimizer = _optimisation(values.pop("optimizer", {}), f"{where} optimizer")
    augmentation = values.pop("augmentation", {})
    if not isinstance(augmentation, dict) or set(augmentation) - {"spatial", "intensity"}:
        raise InputError(f"{where}: augmentation takes 'spatial' and 'intensity' objects")
    sampling = SampleSettings(
        spatial=_build(SpatialAugmentation, augmentation.get("spatial", {}), f"{where} augmentation.spatial"),
        intensity=_build(IntensityAugmentation, augmentation.get("intensity", {}),
                         f"{where} augmentation.intensity"),
        prompts=_build(PromptSimulation, values.pop("prompt_simulation", {}), f"{where} prompt_simulation"),
        queries=_build(QuerySampling, values.pop("queries", {}), f"{where} queries"))
    config = _build(TrainConfig, {**values, "stages": stages, "text": text, "optimizer": optimizer,
                                  "sampling": sampling}, where)
    config = dataclasses.replace(config, dataset=Path(config.dataset), output=Path(config.output),
                                 model_card=None if config.model_card is None else Path(config.model_card))
    if config.orientation is not None:
        config = dataclasses.replace(config, orientation=check_code(config.orientation))
    if config.precision not in PRECISIONS:
        raise InputError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    for name in ("checkpoint_every", "log_every"):
        if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
            raise InputError(f"{where}: {name} must be a positive integer")
    return config


def load_config(path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: training config not found")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    return parse_config(values, str(path))
