"""Text side: prompt tokenization, the text tower, and the encoder that turns prompts into network queries."""
from .encoder import TextEncoder, load_official_state
from .tokenizer import native_token_ids, official_token_ids
from .towers import packaged_tower_folder

__all__ = ["TextEncoder", "load_official_state", "native_token_ids", "official_token_ids", "packaged_tower_folder"]
