"""Query decoder: pre-norm layers of cross-attention from text queries to image tokens, then an MLP.

There is no self-attention among queries, so each query's output depends only on itself and the image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QueryDecoderLayer(nn.Module):
    """One pre-norm layer. `norm1` exists only so official checkpoints load; the pre-norm path never uses it."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """queries (N, B, C); memory (T, B, C) are the values; keys = memory + positional table."""
        attended, _ = self.multihead_attn(self.norm2(queries), keys, memory, need_weights=False)
        queries = queries + self.dropout2(attended)
        hidden = self.dropout(F.relu(self.linear1(self.norm3(queries))))
        return queries + self.dropout3(self.linear2(hidden))


class QueryDecoder(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([QueryDecoderLayer(dim, heads, ffn_dim) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """queries (N, B, C), memory (T, B, C), pos (T, 1, C) → decoded queries (N, B, C)."""
        keys = memory + pos
        for layer in self.layers:
            queries = layer(queries, memory, keys)
        return self.norm(queries)
