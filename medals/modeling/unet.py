"""UNet backbone in the official key layout (nnU-Net's PlainConvUNet as customised by Medal S).

Each stage is conv(3³) → InstanceNorm(affine) → LeakyReLU(0.01), twice; the first conv of an encoder stage
carries the stride. The decoder upsamples with transposed convolutions, joins the skip (upsampled channels
first) and returns its feature maps, highest resolution first. Without autograd the blocks normalise in place
and never materialise the skip concatenation, which roughly halves the peak memory of a full-size forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_SLOPE = 0.01
NORM_EPS = 1e-5


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 5-D tensor stored channels-last (and not also plainly contiguous, as single-channel ones are)."""
    return x.ndim == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def _channel_var_mean(x: torch.Tensor, chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel population variance and mean, each (B, C, 1, ..., 1).

    ATen reduces a channels-last tensor over its spatial axes slowly, so that layout is read as a
    (B, voxels, C) view: the mean in one pass, the centred squares in chunks (no full-size temporary).
    """
    if not is_channels_last(x):
        return torch.var_mean(x, dim=tuple(range(2, x.ndim)), keepdim=True, correction=0)
    batch, channels = x.shape[:2]
    flat = x.permute(0, 2, 3, 4, 1).reshape(batch, -1, channels)
    mean = flat.mean(1, keepdim=True)
    var = torch.zeros_like(mean)
    for start in range(0, flat.shape[1], chunk):
        var += (flat[:, start:start + chunk] - mean).square_().sum(1, keepdim=True)
    shape = (batch, channels) + (1,) * (x.ndim - 2)
    return (var / flat.shape[1]).view(shape), mean.view(shape)


def _cpu_reduced_precision_instance_norm(x: torch.Tensor, norm: nn.InstanceNorm3d) -> torch.Tensor:
    """InstanceNorm of a bfloat16/float16 CPU tensor as a group norm with one channel per group: ATen's kernel
    accumulates the statistics in float32 and normalises in one pass in either layout. (On the CPU, elementwise
    arithmetic mixing a half-width tensor with float32 statistics takes ATen's slow mixed-dtype path, ~20× slower
    than the convolution it follows.) The ATen op itself, as F.group_norm refuses a single voxel per channel.
    """
    return torch.group_norm(x, x.shape[1], norm.weight, norm.bias, norm.eps)


def _instance_norm_lrelu_(x: torch.Tensor, norm: nn.InstanceNorm3d) -> torch.Tensor:
    """InstanceNorm + LeakyReLU. In place when autograd is off (saves one full-size copy per conv)."""
    if torch.is_grad_enabled():
        return F.leaky_relu(norm(x), NEGATIVE_SLOPE)
    if x.dtype != torch.float32 and x.device.type == "cpu":
        return F.leaky_relu_(_cpu_reduced_precision_instance_norm(x, norm), NEGATIVE_SLOPE)
    var, mean = _channel_var_mean(x)
    scale = torch.rsqrt(var + norm.eps) * norm.weight.view(1, -1, *([1] * (x.ndim - 2)))
    shift = norm.bias.view(1, -1, *([1] * (x.ndim - 2))) - mean * scale
    return F.leaky_relu_(x.mul_(scale).add_(shift), NEGATIVE_SLOPE)


class ConvNormAct(nn.Module):
    """conv → InstanceNorm → LeakyReLU.

    `conv` and `norm` are registered both as attributes and inside `all_modules`, exactly like the official
    block, so the state dict carries both alias names and official checkpoints load strictly.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=True)
        self.norm = nn.InstanceNorm3d(out_channels, eps=NORM_EPS, affine=True)
        self.all_modules = nn.Sequential(self.conv, self.norm, nn.LeakyReLU(NEGATIVE_SLOPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _instance_norm_lrelu_(self.conv(x), self.norm)

    def forward_split(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Same as forward(cat(parts, dim=1)) without building the concatenation; `parts` is consumed.

        A convolution is linear in its input channels, so it is the sum of convolutions of each part with the
        matching slice of the weight. Parts are released as soon as they are convolved.
        """
        if torch.is_grad_enabled():
            return self(torch.cat(parts, dim=1))
        pairs, start = [], 0
        for part in parts:
            pairs.append((part, self.conv.weight[:, start:start + part.shape[1]]))
            start += part.shape[1]
        parts.clear()
        return self.forward_terms(pairs)

    def forward_terms(self, terms: list[tuple[torch.Tensor, torch.Tensor]],
                      extra: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised, activated Σ_t conv(input_t, weight_t) + bias + extra, for (input, weight) pairs.

        No autograd. The list is consumed so each input can be freed right after its convolution; `extra` is
        a precomputed pre-activation term of the same shape as the output.
        """
        out = extra
        while terms:
            part, weight = terms.pop(0)
            term = F.conv3d(part, weight, padding=1)
            del part
            out = term if out is None else out.add_(term)
            del term
        out.add_(self.conv.bias.to(out.dtype).view(1, -1, *([1] * (out.ndim - 2))))
        return _instance_norm_lrelu_(out, self.norm)


class StackedConvBlocks(nn.Module):
    """A run of ConvNormAct blocks (`convs.{k}` in the official names); the first may be strided."""

    def __init__(self, n_convs: int, in_channels: int, out_channels: int, first_stride: int = 1):
        super().__init__()
        self.convs = nn.Sequential(*[
            ConvNormAct(in_channels if k == 0 else out_channels, out_channels, first_stride if k == 0 else 1)
            for k in range(n_convs)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)

    def forward_split(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """forward(cat(parts)) without the concatenation (see ConvNormAct.forward_split)."""
        x = self.convs[0].forward_split(parts)
        for block in self.convs[1:]:
            x = block(x)
        return x


class Encoder(nn.Module):
    """Strided-convolution encoder; `stages.{s}.0` wraps each stage's blocks as the official code does."""

    def __init__(self, in_channels: int, features, strides, n_convs: int):
        super().__init__()
        stages, channels = [], in_channels
        for width, stride in zip(features, strides):
            stages.append(nn.Sequential(StackedConvBlocks(n_convs, channels, width, stride)))
            channels = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """Transposed-conv decoder; stage 0 is the deepest. Returns feature maps, highest resolution first."""

    def __init__(self, features, strides, n_convs: int):
        super().__init__()
        transpconvs, stages = [], []
        for s in range(len(features) - 1, 0, -1):
            below, above = features[s], features[s - 1]
            transpconvs.append(nn.ConvTranspose3d(below, above, strides[s], stride=strides[s], bias=True))
            stages.append(StackedConvBlocks(n_convs, 2 * above, above))
        self.transpconvs = nn.ModuleList(transpconvs)
        self.stages = nn.ModuleList(stages)

    def forward(self, skips: list[torch.Tensor], all_levels: bool = False) -> list[torch.Tensor]:
        """`skips` (encoder outputs, shallow first) is consumed: entries are released as soon as they are used."""
        x = skips.pop()
        outs = []
        for transpconv, stage in zip(self.transpconvs, self.stages):
            parts = [transpconv(x), skips.pop()]
            del x
            x = stage.forward_split(parts)
            if all_levels:
                outs.append(x)
        if not all_levels:
            outs.append(x)
        return outs[::-1]


class UNet(nn.Module):
    """Encoder + decoder. Returns the encoder outputs and the decoder outputs (see Decoder.forward)."""

    def __init__(self, in_channels: int, features, strides, n_convs: int):
        super().__init__()
        self.encoder = Encoder(in_channels, features, strides, n_convs)
        self.decoder = Decoder(features, strides, n_convs)
