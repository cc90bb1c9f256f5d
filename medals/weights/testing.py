"""A tiny random model in the engine's format, for end-to-end tests (server, CLI, Slicer) on a bare machine.

In-process:

    from medals.weights import load_model
    from medals.weights.testing import make_tiny_model
    folder = make_tiny_model(tmp_path / "tiny")     # a complete model folder (~2.7 MB), a few seconds
    model = load_model(folder)                       # by path; nets["coarse"/"fine"], text_encoder

As an installed model, e.g. for a real `medals serve` process started by a test:

    home = tmp_path / "medals_home"
    make_tiny_model(home / "models" / "tiny")        # then run the process with MEDALS_HOME=<home>
                                                     # and refer to the model by the name "tiny"

Everything is built in code (no fixture files, no downloads): a 2-layer MPNet text tower of width 32 with a
small WordPiece vocabulary, and two stages of a narrow Medal S network (crop 32³, token grid 1³). Weights are
random but fixed by `seed`, so outputs are reproducible; they segment nothing meaningful.
"""
from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch
from transformers import MPNetConfig, MPNetTokenizer

from ..config import ModelConfig, NetConfig, StageConfig, TextConfig
from ..modeling import MedalSNet
from ..text import TextEncoder
from .model_folder import save_model

TINY_PLAN = NetConfig(crop_size=(32, 32, 32), features=(8, 8, 16, 16, 32, 32), query_dim=48, heads=4, ffn_dim=64,
                      decoder_layers=2, mask_hidden=32)
TINY_STAGES = {"coarse": StageConfig(TINY_PLAN, (3.0, 3.0, 3.0)), "fine": StageConfig(TINY_PLAN, (1.5, 1.5, 1.5))}
TINY_TEXT = TextConfig(tower="tiny-mpnet", hidden_dim=32, query_dim=48, max_length=32, tokenization="official")

# MPNet's specials first (pad id 1), then the BERT-style entries the official tokenization converts literally.
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "<mask>"]
WORDS = ("left right upper lower lobe liver kidney spleen pancreas lung lungs heart aorta brain tumor tumour lesion "
         "nodule bladder stomach bone vertebra prostate cell nuclei in of the and with ct mri mr pet us ultrasound "
         "microscopy abdominal chest pelvic scan image").split()


def write_tiny_tower(folder: Path) -> Path:
    """A Hugging Face MPNet folder (config + tokenizer files, no weights): 2 layers, hidden 32, 4 heads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocabulary = SPECIAL_TOKENS + characters + [f"##{c}" for c in string.ascii_lowercase + string.digits] + WORDS
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary) + "\n")
    MPNetTokenizer(vocab=str(vocab_file), unk_token="[UNK]").save_pretrained(folder)
    MPNetConfig(vocab_size=len(vocabulary), hidden_size=TINY_TEXT.hidden_dim, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, max_position_embeddings=TINY_TEXT.max_length + 2,
                layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(folder)
    return folder


def make_tiny_model(folder, seed: int = 0, name: str = "tiny", orientation: str | None = None) -> Path:
    """Write a complete tiny model folder (coarse + fine stages, text encoder, tower) at `folder`, recording
    `orientation` as its training orientation when given.

    `folder` must not exist or be empty; place it at `$MEDALS_HOME/models/<name>` to make it an installed
    model. Same seed, same weights. Returns the folder.
    """
    config = ModelConfig(name=name, text=TINY_TEXT, stages=TINY_STAGES,
                         description="Tiny random Medal S model for tests (segments nothing meaningful)",
                         orientation=orientation)
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = write_tiny_tower(Path(scratch) / "tower")
        text_state = TextEncoder(TINY_TEXT, tower).state_dict()
        stage_states = {role: MedalSNet(stage.net).state_dict() for role, stage in TINY_STAGES.items()}
        return save_model(folder, config, stage_states, text_state, tower)
