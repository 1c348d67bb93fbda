"""The progressive multi-contrast network (`progressive-multicontrast.txt`, Lyu et al.), slice-wise.

The paper's generator: an encoder of eight unpadded 3×3 convolutions (32, 32, 64, 64, 128, 128, 256, 256
filters), a decoder of eight transposed 3×3 convolutions back to the input size, three skip connections
between them (RED-Net style), and a reference feature extraction network shaped like the encoder whose
output joins the target's in high-level feature space (the bottleneck), the fusion the paper finds best.
For 4× the two-level progressive generator chains two encoder–decoders that share the reference
extractor; the first level is supervised by the same image degraded at half the factor, the second by the
truth (equations 9–11).

Choices where the paper is silent or our setting differs, and why:
- Inputs are pre-interpolated slices on the output grid (as the paper's zero-filled k-space images are) and
  every level predicts a residual over its input instead of the image through a final ReLU: our intensities
  are normalised and may be negative, and a residual trains faster on a CPU.
- The encoder–decoders run on 2 × 2 pixel-unshuffled slices (like `edsr`) with the filter counts divided
  by four for the wide layers (`widths`), so that the two-level network costs about 100 k multiply-adds
  per output pixel instead of the paper's ~6 M: the CPU budget of the product's default tier.
- Fusion at the bottleneck is concatenation followed by a 1 × 1 convolution back to the bottleneck width
  (the paper concatenates; the projection keeps the decoder's width independent of the reference's).
- 2.5D context and the reference mask come as extra input channels, as in every model here; without a
  reference the mask is zero and the network runs as single-contrast.
- The optional WGAN-GP stage is not part of this file (it is a training-time loss).
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import register_architecture
from .blocks import check_context, reference_input, unshuffled

PAPER_WIDTHS = (32, 32, 64, 64, 128, 128, 256, 256)


class Encoder(nn.Module):
    """Unpadded 3×3 convolutions, each followed by a ReLU; keeps the outputs of layers 2, 4 and 6 for the
    skip connections."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        channels = (in_channels,) + tuple(widths)
        self.layers = nn.ModuleList(nn.Conv2d(a, b, 3) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for index, layer in enumerate(self.layers, start=1):
            x = torch.relu(layer(x))
            if index in (2, 4, 6):
                skips.append(x)
        return x, skips


class Decoder(nn.Module):
    """Transposed 3×3 convolutions mirroring the encoder; the skips join after decoder layers 2, 4 and 6
    (where the sizes and widths match the encoder's layers 6, 4 and 2)."""

    def __init__(self, widths: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        # In the paper 256 → 256, 128, 128, 64, 64, 32, 32, 1 filters: each layer takes the width of the
        # encoder layer it mirrors and gives that of the one before it.
        inputs = tuple(reversed(widths))
        outputs = inputs[1:] + (out_channels,)
        self.layers = nn.ModuleList(nn.ConvTranspose2d(a, b, 3) for a, b in zip(inputs, outputs))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        pending = list(skips)
        for index, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if index in (2, 4, 6):
                x = x + pending.pop()
            if index < len(self.layers):
                x = torch.relu(x)
        return x


class Level(nn.Module):
    """One encoder–decoder with the reference's bottleneck features fused in; predicts a residual."""

    def __init__(self, in_channels: int, out_channels: int, widths: tuple[int, ...], use_reference: bool) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, widths)
        self.fuse = nn.Conv2d(2 * widths[-1], widths[-1], 1) if use_reference else None
        self.decoder = Decoder(widths, out_channels)
        # Each level starts as the identity (a zero residual): without normalisation, a randomly initialised
        # 16-layer residual is large enough to put the first thousand steps below cubic interpolation.
        nn.init.zeros_(self.decoder.layers[-1].weight)
        nn.init.zeros_(self.decoder.layers[-1].bias)

    def forward(self, x: torch.Tensor, reference_features: torch.Tensor | None) -> torch.Tensor:
        features, skips = self.encoder(x)
        if self.fuse is not None:
            features = torch.relu(self.fuse(torch.cat([features, reference_features], dim=1)))
        return self.decoder(features, skips)


@register_architecture("progressive")
class ProgressiveMultiContrast(nn.Module):
    """`levels` = 1: the one-level network (the paper's choice for 2×); 2: the progressive network (4×)."""

    def __init__(self, levels: int = 2, widths: tuple[int, ...] = (8, 8, 16, 16, 32, 32, 64, 64),
                 context: int = 1, use_reference: bool = True, unshuffle: int = 2) -> None:
        super().__init__()
        if levels not in (1, 2):
            raise ValueError("the progressive network has one or two levels")
        if len(widths) != 8:
            raise ValueError("the encoder has eight layers: give eight widths")
        self.levels, self.context, self.use_reference, self.unshuffle = levels, context, use_reference, unshuffle
        # Outputs supervised in training besides the final one (the first level's, at half the factor).
        self.auxiliary_outputs = ("halfway",) if levels == 2 else ()
        widths, u2 = tuple(widths), unshuffle ** 2
        image_channels = (1 + 2 * context) * u2
        self.reference_encoder = Encoder(2 * u2, widths) if use_reference else None
        self.stages = nn.ModuleList(Level(image_channels, u2, widths, use_reference) for _ in range(levels))
        # He initialisation: with PyTorch's default the signal shrinks about 2× per layer through the 8 unpadded
        # ReLU layers, and in training the reference encoder's deepest layers died (all-zero output, so the
        # reference was ignored) within 1000 steps.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.weight.abs().sum() > 0:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu",
                                        mode="fan_in" if isinstance(module, nn.Conv2d) else "fan_out")
                nn.init.zeros_(module.bias)

    @property
    def macs_per_output_pixel(self) -> int:
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        return sum(m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] for m in layers) \
            // self.unshuffle ** 2

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None,
                auxiliary: bool = False):
        """The super-resolved slice; with `auxiliary`, also {"halfway": the first level's output} (the
        two-level network's intermediate, supervised at half the factor in training)."""
        check_context(lr, self.context)
        # The unpadded encoder needs at least 17 feature pixels each way (8 layers take 2 each): smaller
        # slices or tiles are padded by replication up to that, and cropped back.
        down, up = unshuffled(*lr.shape[-2:], self.unshuffle, self.unshuffle * (2 * len(PAPER_WIDTHS) + 1))

        reference_features = None
        if self.reference_encoder is not None:
            reference_features, _ = self.reference_encoder(down(reference_input(lr[:, :1], reference, reference_mask)))
        neighbours = lr[:, 1:]
        current = lr[:, :1]
        outputs = []
        for stage in self.stages:
            current = current + up(stage(down(torch.cat([current, neighbours], dim=1)), reference_features))
            outputs.append(current)
        if auxiliary:
            return current, ({"halfway": outputs[0]} if self.levels == 2 else {})
        return current
