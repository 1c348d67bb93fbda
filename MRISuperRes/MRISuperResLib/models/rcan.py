"""RCAN: residual groups of channel-attention blocks, behind a reference head."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import register_architecture
from .blocks import ReferenceHead, same_conv, texture_branch, with_texture


class ChannelAttention(nn.Module):
    """RCAN's channel attention: global average pooling, a bottleneck of two 1×1 convolutions, a sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, max(2, channels // reduction), 1),
                                  nn.ReLU(inplace=True), nn.Conv2d(max(2, channels // reduction), channels, 1),
                                  nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualGroup(nn.Module):
    """RCAN's residual group: residual channel-attention blocks, a 3×3 convolution, a short skip."""

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Sequential(same_conv(channels, channels, 3), nn.ReLU(inplace=True),
                                                    same_conv(channels, channels, 3), ChannelAttention(channels))
                                      for _ in range(blocks)])
        self.tail = same_conv(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = x
        for block in self.blocks:
            current = current + block(current)
        return x + self.tail(current)


@register_architecture("rcan")
class RCAN(nn.Module):
    """RCAN (Zhang et al., 2018), scaled down, on pre-interpolated slices: `groups` residual groups of
    `blocks` channel-attention blocks, a long skip and a global residual; optional reference head.

    Channel attention pools over the whole tile, so tiles smaller than a slice see slightly different
    statistics than the whole slice (the default 256-pixel tile holds most slices whole).
    """

    def __init__(self, features: int = 16, groups: int = 2, blocks: int = 2, reference_features: int = 16,
                 use_reference: bool = False, fusion: str = "feature", texture_transfer: bool = False) -> None:
        super().__init__()
        self.head = ReferenceHead(features, reference_features, use_reference, fusion)
        self.texture = texture_branch(features, texture_transfer)
        self.body = nn.Sequential(*[ResidualGroup(features, blocks) for _ in range(groups)], same_conv(features, features, 3))
        self.tail = same_conv(features, 1, 3)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        shallow = with_texture(self.head(lr, reference, reference_mask), self.texture, texture)
        return lr + self.tail(self.body(shallow) + shallow)
