"""2D slice networks, registered by name so that `models.json` can name them with their arguments.

Every network takes normalised, pre-interpolated slices `(B, 1, H, W)` and returns the same shape: it
learns the residual that interpolation misses. Networks that use a reference take two more inputs of the
same shape, the reference resampled onto the slice and the mask of where the reference has data; their
reference branch is a separate feature extractor whose features join the target's in feature space
(the fusion the progressive multi-contrast paper finds better than stacking input channels). A blank
reference with a zero mask means "no reference".
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ARCHITECTURES: dict[str, type[nn.Module]] = {}


def register_architecture(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        ARCHITECTURES[name] = cls
        return cls
    return add


def build_architecture(name: str, arguments: dict) -> nn.Module:
    return ARCHITECTURES[name](**arguments)


def macs_per_pixel(network: nn.Module) -> int:
    """Multiply-adds per output pixel of a fully convolutional network of stride-1 2D convolutions."""
    return sum(m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
               for m in network.modules() if isinstance(m, nn.Conv2d))


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    # Replicate padding: slice borders are real anatomy edges of the field of view, not zero intensity.
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, padding_mode="replicate")


def _reference_input(lr: torch.Tensor, reference: torch.Tensor | None,
                     reference_mask: torch.Tensor | None) -> torch.Tensor:
    """The reference branch's two channels: the reference where it has data, and that mask (zeros: none)."""
    if reference is None or reference_mask is None:
        return torch.zeros((lr.shape[0], 2) + lr.shape[2:], dtype=lr.dtype, device=lr.device)
    return torch.cat([reference * reference_mask, reference_mask], dim=1)


@register_architecture("srcnn")
class SRCNN(nn.Module):
    """SRCNN (Dong et al., 2014; the 9-1-5 form) with a global residual and an optional reference branch.

    Per output pixel it costs about 81·F + F·M + 25·M multiply-adds (F = features, M = mapped), plus
    81·2·R + R·M with the reference branch (R = reference_features).
    """

    def __init__(self, features: int = 64, mapped: int = 32, reference_features: int = 32,
                 use_reference: bool = False) -> None:
        super().__init__()
        self.use_reference = use_reference
        self.extract = _conv(1, features, 9)
        fused = features
        if use_reference:
            self.reference_extract = _conv(2, reference_features, 9)
            fused += reference_features
        self.map = _conv(fused, mapped, 1)
        self.reconstruct = _conv(mapped, 1, 5)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None) -> torch.Tensor:
        features = self.activation(self.extract(lr))
        if self.use_reference:
            reference_features = self.activation(self.reference_extract(_reference_input(lr, reference, reference_mask)))
            features = torch.cat([features, reference_features], dim=1)
        return lr + self.reconstruct(self.activation(self.map(features)))


@register_architecture("vdsr")
class VDSR(nn.Module):
    """A thin VDSR (Kim et al., 2016): `depth` 3×3 convolutions of `features` channels and a global
    residual, with an optional two-layer reference branch fused by a 1×1 convolution after the first layer.

    Deeper and thinner than SRCNN at about the same cost: 3·3·F·F per body layer.
    """

    def __init__(self, features: int = 16, depth: int = 7, reference_features: int = 16,
                 use_reference: bool = False) -> None:
        super().__init__()
        self.use_reference = use_reference
        self.head = _conv(1, features, 3)
        if use_reference:
            self.reference_extract = nn.Sequential(_conv(2, reference_features, 3), nn.ReLU(inplace=True),
                                                   _conv(reference_features, reference_features, 3))
            self.fuse = _conv(features + reference_features, features, 1)
        self.body = nn.Sequential(*[layer for _ in range(depth - 2)
                                    for layer in (_conv(features, features, 3), nn.ReLU(inplace=True))])
        self.tail = _conv(features, 1, 3)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None) -> torch.Tensor:
        features = self.activation(self.head(lr))
        if self.use_reference:
            reference_features = self.activation(self.reference_extract(_reference_input(lr, reference, reference_mask)))
            features = self.activation(self.fuse(torch.cat([features, reference_features], dim=1)))
        return lr + self.tail(self.body(features))
