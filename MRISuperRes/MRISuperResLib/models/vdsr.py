"""VDSR: a thin, deep residual network; the reference fused in feature space or stacked as input channels."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import register_architecture
from .blocks import FUSIONS, reference_input, same_conv, texture_branch, with_texture


@register_architecture("vdsr")
class VDSR(nn.Module):
    """A thin VDSR (Kim et al., 2016): `depth` 3×3 convolutions of `features` channels and a global
    residual, with an optional two-layer reference branch fused by a 1×1 convolution after the first layer.

    Deeper and thinner than SRCNN at about the same cost: 3·3·F·F per body layer.
    """

    def __init__(self, features: int = 16, depth: int = 7, reference_features: int = 16,
                 use_reference: bool = False, fusion: str = "feature", texture_transfer: bool = False) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {fusion!r}")
        self.use_reference = use_reference
        # "input" stacks reference and mask as extra input channels: the baseline that feature fusion must beat.
        self.stacked = use_reference and fusion == "input"
        self.head = same_conv(3 if self.stacked else 1, features, 3)
        if use_reference and not self.stacked:
            self.reference_extract = nn.Sequential(same_conv(2, reference_features, 3), nn.ReLU(inplace=True),
                                                   same_conv(reference_features, reference_features, 3))
            self.fuse = same_conv(features + reference_features, features, 1)
        self.body = nn.Sequential(*[layer for _ in range(depth - 2)
                                    for layer in (same_conv(features, features, 3), nn.ReLU(inplace=True))])
        self.tail = same_conv(features, 1, 3)
        self.activation = nn.ReLU(inplace=True)
        self.texture = texture_branch(features, texture_transfer)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        if self.stacked:
            head = self.head(torch.cat([lr, reference_input(lr, reference, reference_mask)], dim=1))
            return lr + self.tail(self.body(self.activation(with_texture(head, self.texture, texture))))
        features = self.activation(with_texture(self.head(lr), self.texture, texture))
        if self.use_reference:
            reference_features = self.activation(self.reference_extract(reference_input(lr, reference, reference_mask)))
            features = self.activation(self.fuse(torch.cat([features, reference_features], dim=1)))
        return lr + self.tail(self.body(features))
