"""RFDN: residual feature distillation blocks with enhanced spatial attention, behind a reference head."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import register_architecture
from .blocks import ReferenceHead, same_conv, texture_branch, with_texture


class EnhancedSpatialAttention(nn.Module):
    """RFDN's ESA: a cheap, wide-field spatial gate from a strided, pooled, reduced copy of the features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = max(4, channels // 4)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.inner = nn.Conv2d(reduced, reduced, 1)
        self.strided = nn.Conv2d(reduced, reduced, 3, stride=2, padding=0)
        self.pooled = nn.Sequential(nn.Conv2d(reduced, reduced, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(reduced, reduced, 3, padding=1))
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        coarse = nn.functional.max_pool2d(self.strided(reduced), kernel_size=7, stride=3, ceil_mode=True)
        coarse = nn.functional.interpolate(self.pooled(coarse), size=x.shape[2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.expand(coarse + self.inner(reduced)))


class DistillationBlock(nn.Module):
    """RFDN's residual feature distillation block: three distil/refine steps, concatenation, 1×1, ESA."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        distilled = channels // 2
        self.distil = nn.ModuleList([nn.Conv2d(channels, distilled, 1) for _ in range(3)])
        self.refine = nn.ModuleList([same_conv(channels, channels, 3) for _ in range(3)])
        self.last = same_conv(channels, distilled, 3)
        self.merge = nn.Conv2d(distilled * 4, channels, 1)
        self.attention = EnhancedSpatialAttention(channels)
        self.activation = nn.LeakyReLU(0.05, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, current = [], x
        for distil, refine in zip(self.distil, self.refine):
            kept.append(self.activation(distil(current)))
            current = self.activation(refine(current) + current)
        kept.append(self.activation(self.last(current)))
        return self.attention(self.merge(torch.cat(kept, dim=1)))


@register_architecture("rfdn")
class RFDN(nn.Module):
    """RFDN (Liu et al., 2020), scaled down, on pre-interpolated slices: `blocks` distillation blocks of
    `features` channels, their outputs concatenated and fused, a global residual; optional reference head."""

    def __init__(self, features: int = 16, blocks: int = 2, reference_features: int = 16, use_reference: bool = False,
                 fusion: str = "feature", texture_transfer: bool = False) -> None:
        super().__init__()
        self.head = ReferenceHead(features, reference_features, use_reference, fusion)
        self.texture = texture_branch(features, texture_transfer)
        self.blocks = nn.ModuleList([DistillationBlock(features) for _ in range(blocks)])
        self.merge = nn.Sequential(nn.Conv2d(features * blocks, features, 1), nn.LeakyReLU(0.05, inplace=True))
        self.smooth = same_conv(features, features, 3)
        self.tail = same_conv(features, 1, 3)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        shallow = with_texture(self.head(lr, reference, reference_mask), self.texture, texture)
        outputs, current = [], shallow
        for block in self.blocks:
            current = block(current)
            outputs.append(current)
        deep = self.smooth(self.merge(torch.cat(outputs, dim=1))) + shallow
        return lr + self.tail(deep)
