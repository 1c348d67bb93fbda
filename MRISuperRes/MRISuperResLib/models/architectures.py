"""The registry of 2D slice networks: each family (one file: srcnn, vdsr, rfdn, rcan, edsr, progressive, daasr,
transmrsr, disentangle) registers its class by name, so that `models.json` can name it with its arguments.

Every network takes normalised, pre-interpolated slices `(B, 1 + 2·context, H, W)` and returns `(B, 1, H, W)`:
it learns the residual that interpolation misses. What they share (reference input and head, texture branch,
unshuffling) is in `blocks`.
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
    """Multiply-adds per output pixel of a fully convolutional network of stride-1 2D convolutions (networks
    that work at another resolution say their own)."""
    if hasattr(network, "macs_per_output_pixel"):
        return network.macs_per_output_pixel
    return sum(m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
               for m in network.modules() if isinstance(m, nn.Conv2d))


def measured_macs_per_pixel(network: nn.Module, in_channels: int, size: int = 128) -> int:
    """Multiply-adds per output pixel of the convolutions, linear layers and attention products of one
    forward pass over a `size`² slice, counted with hooks (for networks whose layers work at several
    resolutions)."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif getattr(module, "attention_macs", None):
            total += module.attention_macs(inputs, output)

    hooks = [m.register_forward_hook(count) for m in network.modules()]
    try:
        with torch.no_grad():
            network(torch.zeros(1, in_channels, size, size, device=next(network.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return total // size ** 2


# Each family registers itself on import.
from . import daasr, disentangle, edsr, progressive, rcan, rfdn, srcnn, transmrsr, vdsr  # noqa: E402,F401
