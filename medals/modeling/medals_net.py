"""The Medal S network: UNet features, multi-scale image tokens, text-query decoding and prompt fusion.

Shapes: image (B, 1, H, W, D) with raw 0–255 intensities; union prompt `sc` (B, 1, H, W, D); per-query
prompts `mc` (B, N, H, W, D) aligned with the queries; queries (N, C) shared by the batch or (B, N, C).
Output: raw logits (B, N, H, W, D).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import NetConfig
from .positional import positional_table
from .query_decoder import QueryDecoder
from .unet import StackedConvBlocks, UNet, is_channels_last


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear → GELU after every layer (the official mask heads end with a GELU too)."""
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers)


def _weighted_channel_sum(weights: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """out[b, i, x] = Σ_j weights[b, i, j] · maps[b, j, x] for maps (B, J, *spatial) → (B, I, *spatial).

    A batched matrix product on a flat view of the maps in whichever layout they are stored (no copy of the
    full-size maps); a channels-last input gives a channels-last output.
    """
    batch, spatial = maps.shape[0], maps.shape[2:]
    weights = weights.to(maps.dtype)
    if is_channels_last(maps):
        flat = maps.permute(0, 2, 3, 4, 1).reshape(batch, -1, maps.shape[1])  # (B, voxels, J), a view
        out = torch.bmm(flat, weights.transpose(1, 2))
        return out.view(batch, *spatial, -1).permute(0, 4, 1, 2, 3)
    out = torch.bmm(weights, maps.flatten(2))
    return out.view(batch, out.shape[1], *spatial)


def _average_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """avg_pool3d(x, kernel) for sizes divisible by the kernel, summed in float32.

    ATen pools a channels-last tensor slowly (and not at all in bfloat16), so that layout is pooled one axis at a
    time on its (B, H, W, D, C) view: each step sums `kernel` neighbouring rows (3–15× faster). Other layouts
    use avg_pool3d.
    """
    if not is_channels_last(x):
        return F.avg_pool3d(x, kernel)
    batch, channels, h, w, d = x.shape
    rows = x.permute(0, 2, 3, 4, 1).reshape(batch * h // kernel, kernel, w * d * channels).sum(1, dtype=torch.float32)
    rows = rows.view(-1, kernel, d * channels).sum(1)
    rows = rows.view(-1, kernel, channels).sum(1).div_(kernel ** 3)
    return rows.view(batch, h // kernel, w // kernel, d // kernel, channels).permute(0, 4, 1, 2, 3)


class MedalSNet(nn.Module):
    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.channels_last_inference = True
        c = config
        self.backbone = UNet(c.in_channels, c.features, c.strides, c.convs_per_stage)
        # Pool every encoder scale onto the bottleneck's token grid (kernel = stride ratio to the bottleneck).
        self.pool_kernels = []
        total = 1
        for stride in c.strides:
            total *= stride
            self.pool_kernels.append(c.token_stride // total)
        self.projection_layer = nn.Sequential(
            nn.Linear(sum(c.features), c.query_dim), nn.GELU(), nn.Linear(c.query_dim, c.query_dim), nn.GELU())
        self.register_buffer("pos_embedding", positional_table(c.token_grid, c.query_dim), persistent=False)
        self.transformer_decoder = QueryDecoder(c.query_dim, c.heads, c.ffn_dim, c.decoder_layers)
        if c.deep_supervision:
            # Heads for decoder levels /2, /4, /8 straight from the decoded queries (training only).
            self.mid_mask_embed_proj = nn.ModuleList([
                _mlp([c.query_dim, c.mask_hidden * (k + 1) // 2, c.features[k]]) for k in (1, 2, 3)])
        self.mask_embed_proj = _mlp([c.query_dim, c.mask_hidden, c.mask_dim])
        self.fusion_conv = StackedConvBlocks(1, 2 * c.mask_dim, c.mask_dim)

    def encode(self, image: torch.Tensor, sc: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encoder outputs for image (B,1,H,W,D) and union prompt sc (None = zeros), shallow first."""
        if sc is None:
            sc = torch.zeros_like(image)
        x = torch.cat([image, sc.to(image.dtype)], dim=1)
        if self.channels_last_inference and x.device.type == "cpu" and not torch.is_grad_enabled():
            # oneDNN's 3-D convolutions run ~2-3× faster channels-last on the CPU and need no layout copies.
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.backbone.encoder(x)

    def image_tokens(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Encoder outputs → token memory (T, B, C), tokens flattened row-major over (h, w, d)."""
        pooled = [_average_pool(s, k) if k > 1 else s for s, k in zip(skips, self.pool_kernels)]
        tokens = torch.cat(pooled, dim=1).flatten(2).transpose(1, 2)  # (B, T, ΣC)
        return self.projection_layer(tokens).transpose(0, 1)

    def decode_queries(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Queries (N, C) shared by the batch, or (B, N, C) → decoded queries (B, N, C)."""
        if queries.ndim == 2:
            queries = queries[:, None, :].expand(-1, memory.shape[1], -1)
        else:
            queries = queries.transpose(0, 1)
        decoded = self.transformer_decoder(queries.to(memory.dtype), memory, self.pos_embedding.to(memory.dtype))
        return decoded.transpose(0, 1)

    def pixel_features(self, full_res: torch.Tensor, embeddings: torch.Tensor,
                       mc: torch.Tensor | None) -> torch.Tensor:
        """Per-voxel embedding (B, mask_dim, H, W, D), fused with the per-query prompts when `mc` is given.

        Fusion: each voxel gets Σ_n mc[n]·e_n (the mask embeddings of the classes whose prompt covers it),
        concatenated with the decoder features and mixed by `fusion_conv`.
        """
        if mc is None:
            return full_res
        block = self.fusion_conv.convs[0]
        n_queries, width = embeddings.shape[1], full_res.shape[1]
        if torch.is_grad_enabled() or n_queries > self.config.mask_dim:
            prompt_embedding = _weighted_channel_sum(embeddings.transpose(1, 2), mc.to(full_res.dtype))
            return self.fusion_conv.forward_split([full_res, prompt_embedding])
        # Inference shortcut, exact by linearity: conv(Σ_n mc_n·e_n, W) = conv(mc, K) with the per-query kernels
        # K[o, n] = Σ_c W[o, c]·e_n[c]. Convolving N masks instead of a mask_dim-channel map saves most of the
        # fusion's cost for N < mask_dim, and an all-zero prompt (the coarse stage) contributes nothing at all.
        feature_weight, prompt_weight = block.conv.weight[:, :width], block.conv.weight[:, width:]
        prompt_term = None
        if mc.any():
            batch, spatial = mc.shape[0], mc.shape[2:]
            kernels = torch.einsum("ocxyz,bnc->bonxyz", prompt_weight, embeddings.to(prompt_weight.dtype))
            masks = mc.to(full_res.dtype).reshape(1, batch * n_queries, *spatial)
            if is_channels_last(full_res):
                masks = masks.contiguous(memory_format=torch.channels_last_3d)
            prompt_term = F.conv3d(masks, kernels.flatten(0, 1), padding=1, groups=batch)
            prompt_term = prompt_term.view(batch, -1, *spatial) if batch == 1 else prompt_term.reshape(
                batch, -1, *spatial)
        return block.forward_terms([(full_res, feature_weight)], extra=prompt_term)

    @staticmethod
    def logits(embeddings: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Dot product of each query's mask embedding (B, N, C) with every voxel's embedding → (B, N, H, W, D)."""
        return _weighted_channel_sum(embeddings, pixels)

    def forward(self, queries: torch.Tensor, image: torch.Tensor, sc: torch.Tensor | None = None,
                mc: torch.Tensor | None = None):
        """Logits (B, N, H, W, D); with deep supervision in training, a list [full, /2, /4, /8].

        `sc=None` means a zero prompt channel; `mc=None` skips the fusion path (which differs from fusing an
        all-zero prompt, as the official coarse stage does).
        """
        skips = self.encode(image, sc)
        decoded = self.decode_queries(queries, self.image_tokens(skips))
        embeddings = self.mask_embed_proj(decoded)  # (B, N, mask_dim)
        deep = self.config.deep_supervision and self.training
        outs = self.backbone.decoder(skips, all_levels=deep)  # consumes the skips to free memory early
        logits = self.logits(embeddings, self.pixel_features(outs[0], embeddings, mc))
        if not deep:
            return logits
        mid = [_weighted_channel_sum(head(decoded), outs[k]) for k, head in zip((1, 2, 3), self.mid_mask_embed_proj)]
        return [logits, *mid]
