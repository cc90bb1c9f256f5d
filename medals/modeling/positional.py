"""The fixed 3-D sine/cosine positional table added to the cross-attention keys."""
from __future__ import annotations

import math

import torch


def positional_table(grid: tuple[int, int, int], channels: int) -> torch.Tensor:
    """Table of shape (h·w·d, 1, channels) for a token grid (h, w, d), flattened row-major (d fastest).

    Each axis gets a block of 2·ceil(channels/6) channels holding sin(p·f_j), cos(p·f_j) interleaved, with
    f_j = 10000^(-2j/block) and integer positions p; blocks are concatenated in (h, w, d) order and cut to
    `channels`. Evaluated in float32 exactly as the official table is.
    """
    block = 2 * math.ceil(channels / 6)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, block, 2).float() / block))

    def axis_block(n: int) -> torch.Tensor:
        angles = torch.arange(n).float()[:, None] * inv_freq[None, :]
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (n, block), interleaved

    h, w, d = grid
    table = torch.cat([
        axis_block(h)[:, None, None, :].expand(h, w, d, block),
        axis_block(w)[None, :, None, :].expand(h, w, d, block),
        axis_block(d)[None, None, :, :].expand(h, w, d, block),
    ], dim=-1)[..., :channels]
    return table.reshape(h * w * d, 1, channels).contiguous()
