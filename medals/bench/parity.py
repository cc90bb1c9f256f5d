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

def first_half_blocks(count: int) -> torch.Tensor:
    """The fixtures' block rule: `randperm` replaced by `arange`, so the first K//2 blocks (C order) are kept."""
    return torch.arange(count)


def load_fixture(folder: Path, name: str):
    """(json metadata, npz arrays) of one fixture."""
    return json.loads((folder / f"{name}.json").read_text()), np.load(folder / f"{name}.npz", allow_pickle=False)


def label_values(meta: dict) -> tuple[int, ...]:
    """A pipeline case's label values, in the order of its prompts (the order of the queries)."""
    return tuple(int(value) for value in meta["prompts"])


def pipeline_stages(meta: dict, state_dict) -> dict:
    """A pipeline case's coarse and fine StageModels: `state_dict(manifest, seed)` at the case's stage seeds, with
    the fixture README's logit-bias edit (one feature channel made the constant β, its embedding the constant
    GELU(pre_gelu))."""
    from ..config import NetConfig, StageConfig
    from ..modeling import MedalSNet
    from ..pipeline.stage import StageModel

    built = {}
    bias = meta["logit_bias"]
    for name, key, seed, beta in zip(("coarse", "fine"), ("stage1", "stage2"), meta["stage_seeds"], bias["beta"]):
        state = state_dict(NET_KEYS, seed)
        for alias in ("norm", "all_modules.1"):
            state[f"fusion_conv.convs.0.{alias}.weight"][bias["channel"]] = 0
            state[f"fusion_conv.convs.0.{alias}.bias"][bias["channel"]] = beta
        state["mask_embed_proj.2.weight"][bias["channel"], :] = 0
        state["mask_embed_proj.2.bias"][bias["channel"]] = bias["pre_gelu"]
        config = StageConfig(NetConfig(crop_size=tuple(meta["stages"][key]["crop"])),
                             tuple(meta["stages"][key]["spacing"]))
        net = MedalSNet(config.net).eval()
        net.load_state_dict(state, strict=True)
        built[name] = StageModel(net, config)
    return built


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

    def cases(self, prefix: str, holding: str) -> list[str]:
        """Names of the fixtures `<prefix>*` whose arrays include `holding`: a set with other shapes (and so other
        names) is used whole."""
        names = sorted(path.stem for path in self.folder.glob(f"{prefix}*.npz")
                       if holding in np.load(path, allow_pickle=False).files)
        if not names:
            raise FileNotFoundError(f"no {prefix}* fixture holding '{holding}' in {self.folder}")
        return names

    def state_dict(self, manifest: str, seed: int) -> dict[str, torch.Tensor]:
        """The generator's weights for every key of `manifest` (a key → shape file in the folder) at `seed`."""
        return self.generator.deterministic_state_dict(json.loads((self.folder / manifest).read_text()), seed)

    def network(self, meta: dict):
        """The official-width network a `net_*` fixture was recorded with: its image size and weight seed, loaded
        strictly with the generator's weights."""
        from ..config import NetConfig
        from ..modeling import MedalSNet

        net = MedalSNet(NetConfig(crop_size=tuple(meta["image_size"]))).eval()
        net.load_state_dict(self.state_dict(NET_KEYS, meta["weights_seed"]), strict=True)
        return net

    def pipeline_stages(self, meta: dict) -> dict:
        return pipeline_stages(meta, self.state_dict)
