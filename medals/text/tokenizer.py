"""Prompt strings → token ids and attention mask, by the official Medal S rule or the tower's own.

Both functions are pure: they take a Hugging Face tokenizer and a list of N strings and return
`(input_ids, attention_mask)`, two int64 tensors of shape (N, L) where L is the longest encoded prompt,
capped at `max_length`.
"""
from __future__ import annotations

import torch

TOKENIZATIONS = ("official", "native")
"""Tokenization rules a TextConfig may name."""


def official_token_ids(tokenizer, prompts: list[str], max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The official Medal S rule (spec §4.2), which the released text-encoder projection was trained on.

    Per prompt: the literal strings "[CLS]" + the tokenizer's WordPiece tokens + "[SEP]", converted with the
    vocabulary (for MPNet these are ordinary vocabulary entries, not its `<s>`/`</s>` specials). The batch is
    padded with id 0 (MPNet's `<s>`, not its pad id 1); a prompt longer than `max_length` is cut and its last
    id replaced by "[SEP]"'s id. The mask is `id > 0`, so a literal `<s>` in a prompt (id 0) is masked out
    like padding, exactly as in the official code.
    """
    sep_id = tokenizer.convert_tokens_to_ids("[SEP]")
    sequences = []
    for prompt in prompts:
        ids = tokenizer.convert_tokens_to_ids(["[CLS]", *tokenizer.tokenize(prompt), "[SEP]"])
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + [sep_id]
        sequences.append(ids)
    input_ids = torch.zeros(len(sequences), max(len(ids) for ids in sequences), dtype=torch.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return input_ids, (input_ids > 0).to(torch.int64)


def native_token_ids(tokenizer, prompts: list[str], max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's own encoding (its special tokens, its pad id, its attention mask), as sentence encoders
    such as all-MiniLM-L6-v2 were trained; prompts longer than `max_length` tokens are truncated."""
    encoded = tokenizer(list(prompts), padding="longest", truncation=True, max_length=max_length,
                        return_tensors="pt")
    return encoded["input_ids"].to(torch.int64), encoded["attention_mask"].to(torch.int64)


def token_ids(tokenizer, prompts: list[str], rule: str, max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)`, each (N, L) int64, by the named rule (one of TOKENIZATIONS)."""
    if rule == "official":
        return official_token_ids(tokenizer, prompts, max_length)
    if rule == "native":
        return native_token_ids(tokenizer, prompts, max_length)
    raise ValueError(f"unknown tokenization {rule!r}; expected one of {', '.join(TOKENIZATIONS)}")
