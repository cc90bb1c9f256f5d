"""The parity fixtures: inputs and outputs recorded from the official Medal S code (float32, CPU), and what
rebuilds their networks from the fixture folder's own deterministic weight generator (`weights.py`).

The folder is the one given, else $MEDALS_PARITY_DIR, else Testing/Data/parity of the source checkout this
package runs from. A pip-installed engine has no fixtures: `ParityFixtures.find` then says where it looked.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

ENVIRONMENT = "MEDALS_PARITY_DIR"
CHECKOUT_FOLDER = Path(__file__).resolve().parents[2] / "Testing" / "Data" / "parity"
NET_KEYS = "medals_net_keys.json"

# Tolerances of the fixture README: about 100× the official code's own thread-to-thread noise.
LOGITS_TOL = 1e-3
INTERMEDIATE_TOL = 1e-4
PROBABILITY_TOL = 1e-4
IMAGE_TOL = 1e-3

PIPELINE_LABEL_VALUES = (1, 2)
"""The label values of `pipeline_small`'s two prompts."""


def first_half_blocks(count: int) -> torch.Tensor:
    """The fixtures' block rule: `randperm` replaced by `arange`, so the first K//2 blocks (C order) are kept."""
    return torch.arange(count)


def load_fixture(folder: Path, name: str):
    """(json metadata, npz arrays) of one fixture."""
    return json.loads((folder / f"{name}.json").read_text()), np.load(folder / f"{name}.npz", allow_pickle=False)


class ParityFixtures:
    """One fixture folder: its fixtures, its weight generator and the networks built from them."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        spec = importlib.util.spec_from_file_location("parity_weights", self.folder / "weights.py")
        self.generator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.generator)

    @classmethod
    def find(cls, folder=None) -> "ParityFixtures":
        """The fixtures in `folder`, $MEDALS_PARITY_DIR or the source checkout; FileNotFoundError says where it
        looked when there are none."""
        folder = Path(folder or os.environ.get(ENVIRONMENT) or CHECKOUT_FOLDER).resolve()
        if not (folder / "weights.py").is_file():
            raise FileNotFoundError(f"parity fixtures not found in {folder} (they ship with the source checkout, "
                                    f"not the pip package); give their folder with --parity-dir or ${ENVIRONMENT}")
        return cls(folder)

    def load(self, name: str):
        return load_fixture(self.folder, name)

    def state_dict(self, manifest: str, seed: int = 0) -> dict[str, torch.Tensor]:
        """The generator's weights for every key of `manifest` (a key → shape file in the folder)."""
        return self.generator.deterministic_state_dict(json.loads((self.folder / manifest).read_text()), seed)

    def network(self, crop_size, seed: int = 0, state: dict | None = None):
        """An official-width network for `crop_size`, loaded strictly with the generator's weights (or `state`)."""
        from ..config import NetConfig
        from ..modeling import MedalSNet

        net = MedalSNet(NetConfig(crop_size=tuple(crop_size))).eval()
        net.load_state_dict(self.state_dict(NET_KEYS, seed) if state is None else state, strict=True)
        return net

    def pipeline_stages(self, meta: dict) -> dict:
        """`pipeline_small`'s coarse and fine StageModels: its seeds with the README's logit-bias edit."""
        from ..config import NetConfig, StageConfig
        from ..pipeline.stage import StageModel

        built = {}
        bias = meta["logit_bias"]
        for name, key, seed, beta in zip(("coarse", "fine"), ("stage1", "stage2"), meta["stage_seeds"], bias["beta"]):
            state = self.state_dict(NET_KEYS, seed)
            for alias in ("norm", "all_modules.1"):
                state[f"fusion_conv.convs.0.{alias}.weight"][bias["channel"]] = 0
                state[f"fusion_conv.convs.0.{alias}.bias"][bias["channel"]] = beta
            state["mask_embed_proj.2.weight"][bias["channel"], :] = 0
            state["mask_embed_proj.2.bias"][bias["channel"]] = bias["pre_gelu"]
            config = StageConfig(NetConfig(crop_size=tuple(meta["stages"][key]["crop"])),
                                 tuple(meta["stages"][key]["spacing"]))
            built[name] = StageModel(self.network(config.crop_size, state=state), config)
        return built
