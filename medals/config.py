"""Configurations: the network plan, a stage (crop + working spacing), a text encoder, a model bundle.

The official Medal S models and the small demo model differ only in these values; the same code builds both.
All spatial tuples are in the network's axis order (h, w, d) — see ARCHITECTURE.md for how that maps to the
(k, j, i) arrays at the engine's boundary.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .orientation import check_code

MODALITIES = ("ct", "mri", "us", "pet", "microscopy")
"""Modality names in the order of the official modality-embedding table (code = index)."""


@dataclass(frozen=True)
class NetConfig:
    """Plan of one Medal S network: UNet backbone, token memory, query decoder, mask head.

    `crop_size` fixes the positional table, so a network is built for the exact patch it will see.
    """

    crop_size: tuple[int, int, int] = (224, 224, 128)
    in_channels: int = 2
    features: tuple[int, ...] = (64, 64, 128, 256, 512, 768)
    strides: tuple[int, ...] = (1, 2, 2, 2, 2, 2)
    convs_per_stage: int = 2
    query_dim: int = 768
    heads: int = 8
    ffn_dim: int = 2048
    decoder_layers: int = 6
    mask_hidden: int = 256
    deep_supervision: bool = False

    def __post_init__(self):
        if len(self.features) != len(self.strides):
            raise ValueError(f"features {self.features} and strides {self.strides} differ in length")
        if self.query_dim % self.heads:
            raise ValueError(f"query_dim {self.query_dim} is not divisible by heads {self.heads}")
        for size in self.crop_size:
            if size % self.token_stride:
                raise ValueError(f"crop size {self.crop_size} is not a multiple of the token stride {self.token_stride}")

    @property
    def token_stride(self) -> int:
        """Downsampling factor of the bottleneck (32 for the official plan)."""
        return math.prod(self.strides)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        return tuple(size // self.token_stride for size in self.crop_size)

    @property
    def mask_dim(self) -> int:
        """Width of the per-voxel embedding and of the mask embeddings (the first stage's width)."""
        return self.features[0]

    def with_crop(self, crop_size) -> "NetConfig":
        return dataclasses.replace(self, crop_size=tuple(int(c) for c in crop_size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "NetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown network config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class StageConfig:
    """One inference stage: the network plan (with its crop) and the working spacing (h, w, d) in mm."""

    net: NetConfig
    target_spacing: tuple[float, float, float]

    @property
    def crop_size(self) -> tuple[int, int, int]:
        return self.net.crop_size

    def to_dict(self) -> dict:
        return {"net": self.net.to_dict(), "target_spacing": list(self.target_spacing)}

    @classmethod
    def from_dict(cls, values: dict) -> "StageConfig":
        return cls(NetConfig.from_dict(values["net"]), tuple(float(s) for s in values["target_spacing"]))


@dataclass(frozen=True)
class TextConfig:
    """Text encoder: a Hugging Face tower folder, the pooling/tokenization rule, and the query projection.

    `tokenization` is "official" (literal [CLS]/[SEP], id-0 padding, Medal S §4.2) or "native" (the tower's
    own tokenizer, for towers such as MiniLM that were not trained with the official rule).
    """

    tower: str = "BioLORD-2023-C"
    hidden_dim: int = 768
    query_dim: int = 768
    max_length: int = 256
    tokenization: str = "official"
    modalities: tuple[str, ...] = MODALITIES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TextConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


OFFICIAL_COARSE = StageConfig(NetConfig(crop_size=(224, 224, 128)), (1.5, 1.5, 3.0))
OFFICIAL_FINE = StageConfig(NetConfig(crop_size=(192, 192, 192)), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class ModelConfig:
    """A complete model as installed in the store: text encoder plus one or two stages.

    `stages` maps "coarse" and/or "fine" to their StageConfig; either may be missing (then the pipeline runs
    the other alone). `orientation`: the code of the array orientation the model was trained in (see
    `medals.orientation`; images are turned to it before segmenting), or None to take arrays as they come (the
    official model).
    """

    name: str
    text: TextConfig = field(default_factory=TextConfig)
    stages: dict = field(default_factory=lambda: {"coarse": OFFICIAL_COARSE, "fine": OFFICIAL_FINE})
    description: str = ""
    orientation: str | None = None

    def to_dict(self) -> dict:
        values = {
            "format": "medals-model/1",
            "name": self.name,
            "description": self.description,
            "text": self.text.to_dict(),
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
        }
        if self.orientation is not None:
            values["orientation"] = self.orientation
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        if values.get("format") != "medals-model/1":
            raise ValueError(f"not a MedalS model config (format {values.get('format')!r})")
        return cls(
            name=values["name"],
            description=values.get("description", ""),
            text=TextConfig.from_dict(values["text"]),
            stages={k: StageConfig.from_dict(v) for k, v in values["stages"].items()},
            orientation=None if values.get("orientation") is None else check_code(values["orientation"]),
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
