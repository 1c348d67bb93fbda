"""DAASR, dual attention aggregation for reference-guided super-resolution (`daasr-reference-guided.txt`).

The paper's network: hierarchical feature alignment groups (HFAG), each a channel-wise transformer (CWT:
LN → attention over channels → LN → MLP) on the target's features, then a spatial alignment transformer
(SAT): the reference and its blurred counterpart go through a shared spatial feature extractor (SFE: a
convolution, an activation and three residual blocks); the target's structure features query the blurred
reference's features by cosine similarity of patches, giving an **index map** P (the best-matching patch)
and a **similarity map** C (its score); the reference features at P are concatenated with the structure
features, refined by a 1 × 1 convolution and multiplied by C. Losses: L1 on the final output, plus L1 on the
structure branch's own reconstruction (`auxiliary`).

Choices where the paper is silent or our setting differs, and why:
- Pre-interpolated slices in, a residual over them out, features on 2 × 2 pixel-unshuffled slices (like
  `edsr`): the CPU budget.
- The blurred reference is degraded as the input is: a moving box average of the thick-slice `factor` along
  the slice's rows (the low-resolution axis; the pipeline passes the plane's factor), not the paper's 4×
  bicubic down-and-up, which matches in-plane bicubic data only.
- Matching is searched in a window of ±`search` feature pixels around each position (±2·search voxels)
  instead of the whole image: our references are registered to the target up to a few voxels, and the
  window bounds memory to (2·search + 1)² similarity maps per feature map, whatever the tile size.
- The SAT output is added to the structure features (a residual): the paper multiplies the fused result by
  C, and without the residual a low score would erase the structure features as well.
- C is the cosine score mapped onto [0, 1] ((score + 1) / 2) and is zero where the reference has no data
  (its mask), so without a reference the network runs its structure branch alone. The residual blocks have no batch normalisation (batch statistics of 16 patches
  would differ from those of a whole slice at inference).
- The SFE's width and the number of groups are chosen for the CPU budget (about 130 k multiply-adds per
  output pixel with the defaults).
- `reference_at_head` (a departure, off in the paper's form): the reference and its mask also enter the
  shallow features through their own 3 × 3 convolution, as `edsr-mixed` takes them. Trained on the CPU, the
  paper's form learned to keep its alignment path small and barely used the reference (README); this gives
  the reference's fine detail a path from the first layer. The convolution starts at zero, so weights
  trained without it load unchanged and fine-tuning begins exactly where they were.
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import register_architecture
from .blocks import check_context, reference_input, unshuffled


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channels of every pixel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelAttention(nn.Module):
    """Attention whose tokens are channels: a (C/heads)² attention map per head, from queries and keys
    L2-normalised over the pixels, with a learned temperature per head."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k = nn.functional.normalize(q, dim=-1), nn.functional.normalize(k, dim=-1)
        attention = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project((attention @ v).reshape(b, c, h, w))


class ChannelWiseTransformer(nn.Module):
    """LN → channel attention → residual, LN → MLP → residual."""

    def __init__(self, channels: int, heads: int, expansion: int = 2) -> None:
        super().__init__()
        self.norm1, self.attention = LayerNorm2d(channels), ChannelAttention(channels, heads)
        self.norm2 = LayerNorm2d(channels)
        self.mlp = nn.Sequential(nn.Conv2d(channels, expansion * channels, 1), nn.GELU(approximate="tanh"),
                                 nn.Conv2d(expansion * channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SpatialFeatureExtractor(nn.Module):
    """A convolution, a ReLU and three residual blocks; shared by the reference and its blurred copy."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  *[ResidualBlock(channels) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _shifted(x: torch.Tensor, dy: int, dx: int, radius: int) -> torch.Tensor:
    """`x` sampled at (y + dy, x + dx), zero outside; `x` already padded by `radius` on every side."""
    h, w = x.shape[-2] - 2 * radius, x.shape[-1] - 2 * radius
    return x[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w]


def _box3(x: torch.Tensor) -> torch.Tensor:
    """Sums over 3 × 3 neighbourhoods, zero outside."""
    return nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True) * 9


def match_patches(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, search: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every position of `query`, the 3 × 3 patch of `key` within ±`search` pixels with the highest
    cosine similarity: returns (`value` at that patch's centre, the similarity C in [-1, 1], the index map P
    as flat offsets into the (2·search + 1)² window, row by row). Memory: one similarity map per offset,
    never a (positions × positions) matrix."""
    batch, channels, height, width = value.shape
    query_norm = _box3(query.pow(2).sum(1, keepdim=True))
    padded_key = nn.functional.pad(key, (search,) * 4)
    # The key's patch norms over the padded key, so that patches reaching outside count only what the dot
    # products count (Cauchy–Schwarz then keeps the score within [-1, 1]).
    padded_key_norm = _box3(padded_key.pow(2).sum(1, keepdim=True))
    offsets = [(dy, dx) for dy in range(-search, search + 1) for dx in range(-search, search + 1)]
    scores = torch.cat([
        _box3((query * _shifted(padded_key, dy, dx, search)).sum(1, keepdim=True))
        / (query_norm * _shifted(padded_key_norm, dy, dx, search)).clamp_min(1e-12).sqrt()
        for dy, dx in offsets], dim=1)
    score, index = scores.max(dim=1, keepdim=True)
    # Hard retrieval: one gather from the padded value at (y + dy, x + dx).
    side = 2 * search + 1
    rows = torch.arange(height, device=value.device).view(1, 1, height, 1) + index // side
    columns = torch.arange(width, device=value.device).view(1, 1, 1, width) + index % side
    flat = (rows * (width + 2 * search) + columns).view(batch, 1, -1).expand(-1, channels, -1)
    padded_value = nn.functional.pad(value, (search,) * 4).flatten(2)
    retrieved = torch.gather(padded_value, 2, flat).view(batch, channels, height, width)
    return retrieved, score, index


class SpatialAlignmentTransformer(nn.Module):
    """Hard retrieval of the reference features at the index map, fused with the structure features and
    scaled by the similarity map."""

    def __init__(self, channels: int, reference_channels: int, search: int) -> None:
        super().__init__()
        self.search = search
        self.query = nn.Conv2d(channels, reference_channels, 1)
        self.fuse = nn.Conv2d(channels + reference_channels, channels, 1)

    def forward(self, structure: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                reference_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        retrieved, score, _ = match_patches(self.query(structure), key, value, self.search)
        # The cosine score mapped from [-1, 1] onto [0, 1]. Clamping it at 0 instead let training switch the
        # reference off for good: within 1000 steps every score was negative, so no gradient reached the
        # matching again and the network ran as single-contrast.
        confidence = (score + 1) / 2 * reference_mask
        return structure + self.fuse(torch.cat([structure, retrieved], dim=1)) * confidence, confidence


class AlignmentGroup(nn.Module):
    """One HFAG: CWT, then SAT (when the network uses a reference), then a 3 × 3 convolution."""

    def __init__(self, channels: int, reference_channels: int, heads: int, search: int,
                 use_cwt: bool, use_sat: bool) -> None:
        super().__init__()
        self.cwt = ChannelWiseTransformer(channels, heads) if use_cwt else \
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.sat = SpatialAlignmentTransformer(channels, reference_channels, search) if use_sat else None
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, key, value, reference_mask):
        structure = self.cwt(x)
        confidence = None
        features = structure
        if self.sat is not None:
            features, confidence = self.sat(structure, key, value, reference_mask)
        return features + self.conv(features), structure, confidence


@register_architecture("daasr")
class DAASR(nn.Module):
    takes_factor = True
    gives_confidence = True

    def __init__(self, features: int = 64, groups: int = 4, heads: int = 4, reference_features: int = 32,
                 search: int = 2, context: int = 1, use_reference: bool = True, use_cwt: bool = True,
                 use_sat: bool = True, unshuffle: int = 2, reference_at_head: bool = False) -> None:
        super().__init__()
        self.context, self.unshuffle = context, unshuffle
        self.use_reference = use_reference and use_sat
        u2 = unshuffle ** 2
        self.head = nn.Conv2d((1 + 2 * context) * u2, features, 3, padding=1)
        self.reference_head = None
        if use_reference and reference_at_head:
            self.reference_head = nn.Conv2d(2 * u2, features, 3, padding=1)
            nn.init.zeros_(self.reference_head.weight), nn.init.zeros_(self.reference_head.bias)
        self.extractor = SpatialFeatureExtractor(2 * u2, reference_features) if self.use_reference else None
        self.groups = nn.ModuleList(AlignmentGroup(features, reference_features, heads, search, use_cwt,
                                                   self.use_reference) for _ in range(groups))
        self.body_end = nn.Conv2d(features, features, 3, padding=1)
        self.tail = nn.Conv2d(features, u2, 3, padding=1)
        nn.init.zeros_(self.tail.weight), nn.init.zeros_(self.tail.bias)
        # Outputs supervised in training besides the final one (the structure branch's, by the truth).
        self.auxiliary_outputs = ("structure",)
        # Parts that start at zero, so weights trained without them initialise the rest (`initialise_from`).
        self.zero_initialised_parts = ("reference_head.",)

    @property
    def macs_per_output_pixel(self) -> int:
        """Convolutions and matching; the channel attention's C² products per pixel are counted too."""
        convolutions = sum(m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                           for m in self.modules() if isinstance(m, nn.Conv2d))
        if self.extractor is not None:  # it runs twice: the reference and its blurred copy
            convolutions += sum(m.in_channels * m.out_channels * 9 for m in self.extractor.modules()
                                if isinstance(m, nn.Conv2d))
        attention = sum(2 * m.qkv.in_channels ** 2 // m.heads for m in self.modules()
                        if isinstance(m, ChannelAttention))
        matching = sum((2 * m.search + 1) ** 2 * m.query.out_channels * 2 for m in self.modules()
                       if isinstance(m, SpatialAlignmentTransformer))
        return (convolutions + attention + matching) // self.unshuffle ** 2

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None,
                factor: float | None = None, auxiliary: bool = False, confidence: bool = False):
        """The super-resolved slice; with `auxiliary` also {"structure": the CWT branch's own
        reconstruction}; with `confidence` also the similarity map C averaged over the groups, on the
        slice's pixels (0 where no reference was used). `factor`: the low-resolution factor along the rows."""
        check_context(lr, self.context)
        height, width = lr.shape[-2:]
        u = self.unshuffle
        down, up = unshuffled(height, width, u)

        key = value = mask = None
        reference_channels = reference_input(lr[:, :1], reference, reference_mask)
        if self.extractor is not None:
            value = self.extractor(down(reference_channels))
            key = self.extractor(down(blur_rows(reference_channels, factor)))
            mask = down(reference_channels[:, 1:2]).mean(dim=1, keepdim=True)
        shallow = self.head(down(lr))
        if self.reference_head is not None:
            shallow = shallow + self.reference_head(down(reference_channels))
        x, confidences, structure = shallow, [], shallow
        for group in self.groups:
            x, structure, group_confidence = group(x, key, value, mask)
            if group_confidence is not None:
                confidences.append(group_confidence)
        output = lr[:, :1] + up(self.tail(self.body_end(x) + shallow))
        extras = []
        if auxiliary:
            extras.append({"structure": lr[:, :1] + up(self.tail(self.body_end(structure) + shallow))})
        if confidence:
            mean = torch.stack(confidences).mean(0) if confidences else lr.new_zeros(x[:, :1].shape)
            extras.append(nn.functional.interpolate(mean, scale_factor=u, mode="nearest")[..., :height, :width])
        return (output, *extras) if extras else output


def blur_rows(images: torch.Tensor, factor: float | None) -> torch.Tensor:
    """`images` degraded along the rows as a thick slice of `factor` rows would be: a moving box average of
    that width (none for a factor below 2 or unknown)."""
    if factor is None or factor < 2:
        return images
    width = int(round(factor))
    kernel = images.new_full((images.shape[1], 1, width, 1), 1.0 / width)
    padded = nn.functional.pad(images, (0, 0, width // 2, (width - 1) // 2), mode="replicate")
    return nn.functional.conv2d(padded, kernel, groups=images.shape[1])
