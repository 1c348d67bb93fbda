"""Building blocks the network families share: input checks, replicate-padded convolutions, the reference
input and head, pixel-unshuffling, and the texture branch through which swapped scattering features join a
network (`MRISuperResLib.texture`).

Networks that use a reference take it resampled onto the slice with the mask of where it has data; a blank
reference with a zero mask means "no reference". Networks built with `texture_transfer=True` also take
`texture`: the swapped scattering features and the match confidence (81 + 1 channels on the scattering grid),
projected by `TextureBranch.project`, placed on the slice's pixels, and joined to an early layer's features.
"""

from __future__ import annotations

import torch
from torch import nn

FUSIONS = ("feature", "input")


def check_context(lr: torch.Tensor, context: int) -> None:
    """A 2.5D network's input must hold the slice and `context` neighbours on each side."""
    if lr.shape[1] != 1 + 2 * context:
        raise ValueError(f"this network takes the slice and {context} neighbours on each side "
                         f"({1 + 2 * context} channels), not {lr.shape[1]}")


def padded_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """`images` padded by replication at the bottom and right to whole multiples of `multiple` pixels."""
    height, width = images.shape[-2:]
    return nn.functional.pad(images, (0, -width % multiple, 0, -height % multiple), mode="replicate")


class ReplicateConv2d(nn.Conv2d):
    """A same-size convolution whose input is extended by replicating its border pixels, as
    `nn.Conv2d(..., padding_mode="replicate")` computes it (same parameters, results equal to float rounding),
    but without copying the whole input into a padded tensor: it convolves with zero padding and adds what
    the replicated border would have added, from thin strips along the four edges. On 16-channel
    channels_last slices that copy cost about 30 % of each convolution's time on a CPU; other devices pad."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)

    def _border(self, strip: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
        """What replicating instead of zero-padding `strip` adds to the outputs it reaches."""
        difference = nn.functional.pad(strip, pads, mode="replicate") - nn.functional.pad(strip, pads)
        return nn.functional.conv2d(difference, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding[0]
        height, width = x.shape[-2:]
        if p == 0:
            return nn.functional.conv2d(x, self.weight, self.bias)
        # On a GPU the padded copy is cheap and four extra small convolutions per layer are not.
        if height < 2 * p or width < 2 * p or x.device.type != "cpu":
            return nn.functional.conv2d(nn.functional.pad(x, (p, p, p, p), mode="replicate"), self.weight, self.bias)
        out = nn.functional.conv2d(x, self.weight, self.bias, padding=p)
        # Top and bottom rows of outputs (corners included), then the left and right columns between them.
        out[..., :p, :] += self._border(x[..., :2 * p, :], (p, p, p, 0))
        out[..., height - p:, :] += self._border(x[..., height - 2 * p:, :], (p, p, 0, p))
        if height > 2 * p:
            out[..., p:height - p, :p] += self._border(x[..., :, :2 * p], (p, 0, 0, 0))
            out[..., p:height - p, width - p:] += self._border(x[..., :, width - 2 * p:], (0, p, 0, 0))
        return out


def same_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    # Replicate padding: slice borders are real anatomy edges of the field of view, not zero intensity.
    return ReplicateConv2d(in_channels, out_channels, kernel)


def reference_input(lr: torch.Tensor, reference: torch.Tensor | None,
                     reference_mask: torch.Tensor | None) -> torch.Tensor:
    """The reference branch's two channels: the reference where it has data, and that mask (zeros: none)."""
    if reference is None or reference_mask is None:
        return torch.zeros((lr.shape[0], 2) + lr.shape[2:], dtype=lr.dtype, device=lr.device)
    return torch.cat([reference * reference_mask, reference_mask], dim=1)


def unshuffled(height: int, width: int, factor: int, smallest: int = 0):
    """(down, up) for networks that work on pixel-unshuffled slices of `height` × `width`: `down` pads by
    replication to multiples of `factor` (and to at least `smallest` pixels each way), unshuffles (every
    factor × factor block becomes channels) in channels_last layout; `up` shuffles back and crops."""
    pad = (0, max(smallest, width + -width % factor) - width, 0, max(smallest, height + -height % factor) - height)

    def down(x: torch.Tensor) -> torch.Tensor:
        if pad[1] or pad[3]:
            x = nn.functional.pad(x, pad, mode="replicate")
        return nn.functional.pixel_unshuffle(x, factor).contiguous(memory_format=torch.channels_last)

    def up(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(x, factor)[..., :height, :width]

    return down, up


TEXTURE_INPUT_CHANNELS = 82  # 81 swapped scattering channels + the confidence
# Scattering coefficients of [0, 1] images span about 1e-3 to 1: log1p(gain · x) evens out their scales.
TEXTURE_GAIN = 100.0


class TextureBranch(nn.Module):
    """Swapped texture features gated by the confidence of their match, projected into an early layer.

    Two halves, because the swapped features live on the scattering grid (¼ resolution) and the network
    on pixels: `project` gates them and applies the (linear) 1 × 1 reduction to `hidden` channels on that
    grid; the caller places the result on the slice's pixels (`texture.upsample_features`: bilinear, which
    commutes with a 1 × 1 convolution); `forward` takes the placed map on the layer's grid (the unshuffled
    networks average it onto theirs first) and expands it (ReLU, 1 × 1) to the layer's width. The
    features already describe 3 × 3 patches of scattering coefficients (12 × 12 pixels), so no spatial
    kernel is needed. Its output is added to the layer's pre-activation, which is the same as concatenating
    its hidden features to the layer's input. Its last convolution starts at zero, so a texture-transfer
    network starts as its backbone: it can be initialised from the backbone's trained weights and
    fine-tuned. Without texture (`None`), the branch sees what zero texture gives, as in training when no
    reference is given.
    """

    def __init__(self, features: int, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = hidden
        self.reduce = nn.Conv2d(TEXTURE_INPUT_CHANNELS, hidden, 1)
        self.expand = nn.Conv2d(hidden, features, 1)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def project(self, texture: torch.Tensor) -> torch.Tensor:
        """(B, 82, h, w) swapped features and confidence on the scattering grid → (B, hidden, h, w)."""
        swapped, confidence = texture[:, :-1], texture[:, -1:]
        return self.reduce(torch.cat([torch.log1p(TEXTURE_GAIN * swapped.clamp(min=0)) * confidence, confidence], 1))

    def forward(self, projected: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """`projected`: `project`'s output placed on the positions of `like`'s grid."""
        if projected is None:
            # No texture projects to a constant: compute it on one position.
            projected = self.project(torch.zeros((1, TEXTURE_INPUT_CHANNELS, 1, 1), dtype=like.dtype,
                                                 device=like.device))
        return self.expand(torch.relu(projected))


def texture_branch(features: int, texture_transfer: bool) -> TextureBranch | None:
    return TextureBranch(features) if texture_transfer else None


def with_texture(features: torch.Tensor, branch: TextureBranch | None, texture: torch.Tensor | None) -> torch.Tensor:
    return features if branch is None else features + branch(texture, features)


class ReferenceHead(nn.Module):
    """Shallow 3×3 features of the slice, joined by those of the reference when the model uses one.

    fusion="feature": a separate two-layer extractor for the reference (and its mask), its features
    concatenated with the slice's and mixed by a 1×1 convolution; fusion="input": reference and mask
    stacked as extra input channels of the first convolution.
    """

    def __init__(self, features: int, reference_features: int, use_reference: bool, fusion: str = "feature") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {fusion!r}")
        self.use_reference = use_reference
        self.stacked = use_reference and fusion == "input"
        self.target = same_conv(3 if self.stacked else 1, features, 3)
        if use_reference and not self.stacked:
            self.reference = nn.Sequential(same_conv(2, reference_features, 3), nn.ReLU(inplace=True),
                                           same_conv(reference_features, reference_features, 3), nn.ReLU(inplace=True))
            self.fuse = same_conv(features + reference_features, features, 1)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None, reference_mask: torch.Tensor | None) -> torch.Tensor:
        if self.stacked:
            return self.target(torch.cat([lr, reference_input(lr, reference, reference_mask)], dim=1))
        features = self.target(lr)
        if self.use_reference:
            features = self.fuse(torch.cat([features, self.reference(reference_input(lr, reference, reference_mask))], 1))
        return features


def zero_padded_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3 × 3 convolution for the unshuffled families (EDSR and those built on its block)."""
    # Zero padding, unlike the full-resolution families: replicate padding costs 40 % of the run time there
    # (a padded copy of every feature map), and in the unshuffled feature space a border is just a border.
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResidualBlock(nn.Module):
    """EDSR's residual block (no batch norm): two zero-padded 3 × 3 convolutions and a skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(zero_padded_conv(channels, channels), nn.ReLU(inplace=True),
                                  zero_padded_conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
