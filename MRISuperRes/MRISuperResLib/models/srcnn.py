"""SRCNN: the shallow baseline, with a reference branch fused in feature space."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import register_architecture
from .blocks import reference_input, same_conv, texture_branch, with_texture


@register_architecture("srcnn")
class SRCNN(nn.Module):
    """SRCNN (Dong et al., 2014; the 9-1-5 form) with a global residual and an optional reference branch.

    Per output pixel it costs about 81·F + F·M + 25·M multiply-adds (F = features, M = mapped), plus
    81·2·R + R·M with the reference branch (R = reference_features).
    """

    def __init__(self, features: int = 64, mapped: int = 32, reference_features: int = 32,
                 use_reference: bool = False, texture_transfer: bool = False) -> None:
        super().__init__()
        self.use_reference = use_reference
        self.extract = same_conv(1, features, 9)
        self.texture = texture_branch(features, texture_transfer)
        fused = features
        if use_reference:
            self.reference_extract = same_conv(2, reference_features, 9)
            fused += reference_features
        self.map = same_conv(fused, mapped, 1)
        self.reconstruct = same_conv(mapped, 1, 5)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        features = self.activation(with_texture(self.extract(lr), self.texture, texture))
        if self.use_reference:
            reference_features = self.activation(self.reference_extract(reference_input(lr, reference, reference_mask)))
            features = torch.cat([features, reference_features], dim=1)
        return lr + self.reconstruct(self.activation(self.map(features)))
