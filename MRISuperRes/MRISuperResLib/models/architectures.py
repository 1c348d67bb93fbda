"""2D slice networks, registered by name so that `models.json` can name them with their arguments.

Every network takes normalised, pre-interpolated slices `(B, 1, H, W)` and returns the same shape: it
learns the residual that interpolation misses. Networks that use a reference take two more inputs of the
same shape, the reference resampled onto the slice and the mask of where the reference has data; their
reference branch is a separate feature extractor whose features join the target's in feature space
(the fusion the progressive multi-contrast paper finds better than stacking input channels). A blank
reference with a zero mask means "no reference". Networks built with `texture_transfer=True` also take
`texture`: the swapped scattering features and the match confidence of `MRISuperResLib.texture`
(81 + 1 channels on the scattering grid), projected by `TextureBranch.project`, placed on the slice's
pixels, and joined to the first layer's features through `TextureBranch`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ARCHITECTURES: dict[str, type[nn.Module]] = {}
FUSIONS = ("feature", "input")


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


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    # Replicate padding: slice borders are real anatomy edges of the field of view, not zero intensity.
    return ReplicateConv2d(in_channels, out_channels, kernel)


def _reference_input(lr: torch.Tensor, reference: torch.Tensor | None,
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


def _texture_branch(features: int, texture_transfer: bool) -> TextureBranch | None:
    return TextureBranch(features) if texture_transfer else None


def _with_texture(features: torch.Tensor, branch: TextureBranch | None, texture: torch.Tensor | None) -> torch.Tensor:
    return features if branch is None else features + branch(texture, features)


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
        self.extract = _conv(1, features, 9)
        self.texture = _texture_branch(features, texture_transfer)
        fused = features
        if use_reference:
            self.reference_extract = _conv(2, reference_features, 9)
            fused += reference_features
        self.map = _conv(fused, mapped, 1)
        self.reconstruct = _conv(mapped, 1, 5)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        features = self.activation(_with_texture(self.extract(lr), self.texture, texture))
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
                 use_reference: bool = False, fusion: str = "feature", texture_transfer: bool = False) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {fusion!r}")
        self.use_reference = use_reference
        # "input" stacks reference and mask as extra input channels: the baseline that feature fusion must beat.
        self.stacked = use_reference and fusion == "input"
        self.head = _conv(3 if self.stacked else 1, features, 3)
        if use_reference and not self.stacked:
            self.reference_extract = nn.Sequential(_conv(2, reference_features, 3), nn.ReLU(inplace=True),
                                                   _conv(reference_features, reference_features, 3))
            self.fuse = _conv(features + reference_features, features, 1)
        self.body = nn.Sequential(*[layer for _ in range(depth - 2)
                                    for layer in (_conv(features, features, 3), nn.ReLU(inplace=True))])
        self.tail = _conv(features, 1, 3)
        self.activation = nn.ReLU(inplace=True)
        self.texture = _texture_branch(features, texture_transfer)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        if self.stacked:
            head = self.head(torch.cat([lr, _reference_input(lr, reference, reference_mask)], dim=1))
            return lr + self.tail(self.body(self.activation(_with_texture(head, self.texture, texture))))
        features = self.activation(_with_texture(self.head(lr), self.texture, texture))
        if self.use_reference:
            reference_features = self.activation(self.reference_extract(_reference_input(lr, reference, reference_mask)))
            features = self.activation(self.fuse(torch.cat([features, reference_features], dim=1)))
        return lr + self.tail(self.body(features))


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
        self.target = _conv(3 if self.stacked else 1, features, 3)
        if use_reference and not self.stacked:
            self.reference = nn.Sequential(_conv(2, reference_features, 3), nn.ReLU(inplace=True),
                                           _conv(reference_features, reference_features, 3), nn.ReLU(inplace=True))
            self.fuse = _conv(features + reference_features, features, 1)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None, reference_mask: torch.Tensor | None) -> torch.Tensor:
        if self.stacked:
            return self.target(torch.cat([lr, _reference_input(lr, reference, reference_mask)], dim=1))
        features = self.target(lr)
        if self.use_reference:
            features = self.fuse(torch.cat([features, self.reference(_reference_input(lr, reference, reference_mask))], 1))
        return features


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
        self.refine = nn.ModuleList([_conv(channels, channels, 3) for _ in range(3)])
        self.last = _conv(channels, distilled, 3)
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
        self.texture = _texture_branch(features, texture_transfer)
        self.blocks = nn.ModuleList([DistillationBlock(features) for _ in range(blocks)])
        self.merge = nn.Sequential(nn.Conv2d(features * blocks, features, 1), nn.LeakyReLU(0.05, inplace=True))
        self.smooth = _conv(features, features, 3)
        self.tail = _conv(features, 1, 3)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        shallow = _with_texture(self.head(lr, reference, reference_mask), self.texture, texture)
        outputs, current = [], shallow
        for block in self.blocks:
            current = block(current)
            outputs.append(current)
        deep = self.smooth(self.merge(torch.cat(outputs, dim=1))) + shallow
        return lr + self.tail(deep)


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
        self.blocks = nn.Sequential(*[nn.Sequential(_conv(channels, channels, 3), nn.ReLU(inplace=True),
                                                    _conv(channels, channels, 3), ChannelAttention(channels))
                                      for _ in range(blocks)])
        self.tail = _conv(channels, channels, 3)

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
        self.texture = _texture_branch(features, texture_transfer)
        self.body = nn.Sequential(*[ResidualGroup(features, blocks) for _ in range(groups)], _conv(features, features, 3))
        self.tail = _conv(features, 1, 3)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        shallow = _with_texture(self.head(lr, reference, reference_mask), self.texture, texture)
        return lr + self.tail(self.body(shallow) + shallow)


# Families in their own files register themselves on import.
from . import daasr, disentangle, edsr, progressive, transmrsr  # noqa: E402,F401
