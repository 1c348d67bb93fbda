"""TransMRSR (`transmrsr.txt`): convolution + Swin transformer U-shape whose decoder is a generative prior.

The paper's network, scaled to train on 2 CPU cores:
- shallow features F_s: a convolution and two residual blocks;
- encoder: levels of a residual Swin block (RSTB: two Swin layers, a 3 × 3 convolution, a shortcut), each
  followed by patch merging (2 × 2 concatenation, linear), down to 1/16 of the pixels; the deepest features,
  averaged over positions, become the latent vector through a linear layer and an MLP (equation 4);
- the latent vector is pulled towards the nearest of K centroids (the self-distilled truncation trick,
  equation 5: F_lt = φ F_l + (1 − φ) F_lc; the centroids are k-means of latents the pretrained generator's
  mapping network produced, computed once after the generative stage and stored with the weights);
- decoder: a compact StyleSwin generator, pretrained **first** as a GAN on high-resolution slices of
  train/ (`training.priors.pretrain_generator`), then fine-tuned inside the network: at every level a Swin
  block whose normalisations are modulated by the latent (AdaIN, as StyleSwin's), bilinear ×2 upsampling,
  and the channel-wise scale and shift (CWSS, equations 6–9) from the encoder's features at that level on
  half the channels;
- reconstruction from F_s + the decoder's last features (the long skip, equation 10), added to the input
  slice (equation 11).

Choices where the paper is silent or our setting differs, and why:
- Width 32–64 channels, one RSTB per level, three merges, window 8, two heads, MLP ratio 2 (the paper's
  sizes follow SwinIR/StyleSwin: about 100 × the compute); everything after a 2 × 2 pixel unshuffle, like
  `edsr` (the CPU budget). Tiles are padded by replication to multiples of 16 pixels and cropped back.
- The decoder's first input: in the generative stage a learned constant (4 × 4 for 64-pixel patches,
  resized bilinearly for other sizes); in super-resolution, the encoder's deepest features through a 1 × 1
  convolution, so that any slice size works (StyleSwin generates fixed-size images).
- CWSS: α = 1 + conv(F_e), β = conv(F_e) (3 × 3 on the encoder's features, equation 6), so that the
  pretrained decoder starts unchanged; the other half of the channels passes through, as in equation 9.
- Truncation: φ = 0.7 (`truncation`), K = 16 centroids of 2048 sampled latents. φ = 1 turns it off (the
  ablation "without truncation" is the same weights run with `truncation: 1.0`).
- 2.5D context (`context` neighbouring slices as extra input channels) as in our other families; no
  reference (TransMRSR is single-contrast).
- The style modulation normalises each token over its channels (an adaptive layer norm, like the Swin
  layers around it) where StyleSwin's AdaIN normalises each channel over positions; a decoder level runs a
  window layer then a shifted-window layer (StyleSwin splits the heads of one layer between the two); one
  latent vector drives every level (equation 4 gives each block its own; the per-level affine maps of the
  style still differ).
- The latent vector is the mean over the tile's deepest features, and training sees 64-pixel patches
  whose two deepest grids (8 × 8, 4 × 4) are too small for a shifted window: at inference on 256-pixel
  tiles those levels shift and use relative-position biases that short training barely touched, and the
  latent depends on the tile (tiles overlap by 16 pixels). Both are the price of the CPU budget; a GPU run
  on larger patches removes them.
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import measured_macs_per_pixel, register_architecture
from .blocks import ResidualBlock, check_context, padded_to_multiple, unshuffled
from .swin import PatchMerging, ResidualSwinBlock, SwinBlock

MULTIPLE = 16   # pixels: 2 × 2 unshuffle, then three merges


class StyleDecoder(nn.Module):
    """The generator: from the deepest grid up to the unshuffled grid, a style-modulated Swin block per level
    and bilinear ×2 upsampling between levels; `to_image` is used by the generative stage only."""

    def __init__(self, widths: tuple[int, ...], latent_dim: int, heads: int, window: int, unshuffle: int) -> None:
        super().__init__()
        self.widths = widths                                   # deepest first
        self.constant = nn.Parameter(torch.randn(1, widths[0], 4, 4))
        self.blocks = nn.ModuleList([SwinBlock(w, heads, window, style_dim=latent_dim) for w in widths])
        self.changes = nn.ModuleList([nn.Conv2d(a, b, 1) for a, b in zip(widths[:-1], widths[1:])])
        self.to_image = nn.Conv2d(widths[-1], unshuffle ** 2, 3, padding=1)

    def forward(self, start: torch.Tensor, latent: torch.Tensor, modulations: list | None = None) -> torch.Tensor:
        """The last level's features. `modulations`: per level, a function applied to the block's output (CWSS)."""
        x = start
        for level, block in enumerate(self.blocks):
            x = block(x, latent)
            if modulations is not None:
                x = modulations[level](x)
            if level < len(self.changes):
                x = self.changes[level](nn.functional.interpolate(x, scale_factor=2, mode="bilinear",
                                                                  align_corners=False))
        return x

    def constant_start(self, batch: int, height: int, width: int) -> torch.Tensor:
        start = self.constant if self.constant.shape[-2:] == (height, width) else nn.functional.interpolate(
            self.constant, size=(height, width), mode="bilinear", align_corners=False)
        return start.expand(batch, -1, -1, -1)


class ChannelScaleShift(nn.Module):
    """CWSS: α ⊙ F¹ + β on half of the decoder's channels, α and β from the encoder's features."""

    def __init__(self, encoder_channels: int, decoder_channels: int) -> None:
        super().__init__()
        self.half = decoder_channels // 2
        self.conv = nn.Conv2d(encoder_channels, 2 * (decoder_channels - self.half), 3, padding=1)
        nn.init.zeros_(self.conv.weight), nn.init.zeros_(self.conv.bias)

    def forward(self, decoded: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.conv(encoded).chunk(2, dim=1)
        kept, modulated = decoded[:, :self.half], decoded[:, self.half:]
        return torch.cat([kept, (1 + alpha) * modulated + beta], dim=1)


@register_architecture("transmrsr")
class TransMRSR(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 48, 64, 64), latent_dim: int = 64, heads: int = 2,
                 window: int = 8, context: int = 1, unshuffle: int = 2, centroids: int = 16,
                 truncation: float = 0.7) -> None:
        super().__init__()
        widths = tuple(widths)
        self.context, self.unshuffle, self.truncation = context, unshuffle, truncation
        in_channels = (1 + 2 * context) * unshuffle ** 2
        self.shallow = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1),
                                     ResidualBlock(widths[0]), ResidualBlock(widths[0]))
        self.encoder = nn.ModuleList([ResidualSwinBlock(w, heads, window) for w in widths])
        self.merges = nn.ModuleList([PatchMerging(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.to_latent = nn.Sequential(nn.Linear(widths[-1], latent_dim), nn.LeakyReLU(0.2),
                                       nn.Linear(latent_dim, latent_dim))
        # The generative stage's mapping network (noise → latent); unused in super-resolution.
        self.mapping = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(latent_dim, latent_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(latent_dim, latent_dim))
        self.register_buffer("centroids", torch.zeros(centroids, latent_dim))
        self.register_buffer("has_centroids", torch.zeros((), dtype=torch.bool))
        self.decoder = StyleDecoder(widths[::-1], latent_dim, heads, window, unshuffle)
        self.start = nn.Conv2d(widths[-1], widths[-1], 1)
        self.scale_shift = nn.ModuleList([ChannelScaleShift(w, w) for w in widths[::-1]])
        self.reconstruction = nn.Sequential(nn.Conv2d(widths[0], widths[0], 3, padding=1), nn.ReLU(inplace=True),
                                            nn.Conv2d(widths[0], unshuffle ** 2, 3, padding=1))
        # The residual starts at zero: an untrained network returns the interpolated slice.
        nn.init.zeros_(self.reconstruction[-1].weight), nn.init.zeros_(self.reconstruction[-1].bias)

    @property
    def macs_per_output_pixel(self) -> int:
        return measured_macs_per_pixel(self, 1 + 2 * self.context)

    def generation_only(self) -> list[nn.Module | nn.Parameter]:
        """What only the generative stage uses: the mapping network, the learned constant, the image layer."""
        return [self.mapping, self.decoder.constant, self.decoder.to_image]

    def truncate(self, latent: torch.Tensor) -> torch.Tensor:
        """Equation 5: the latent pulled towards its nearest centroid (unchanged until centroids exist)."""
        if not bool(self.has_centroids) or self.truncation >= 1.0:
            return latent
        nearest = self.centroids[torch.cdist(latent, self.centroids).argmin(dim=1)]
        return self.truncation * latent + (1 - self.truncation) * nearest

    def generate(self, noise: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The generative stage: images (B, 1, height, width) from noise (B, latent_dim)."""
        grid = (height // MULTIPLE, width // MULTIPLE)
        features = self.decoder(self.decoder.constant_start(noise.shape[0], *grid), self.mapping(noise))
        return nn.functional.pixel_shuffle(self.decoder.to_image(features), self.unshuffle)

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        check_context(lr, self.context)
        height, width = lr.shape[-2:]
        padded = padded_to_multiple(lr, MULTIPLE)
        down, up = unshuffled(*padded.shape[-2:], self.unshuffle)
        shallow = self.shallow(down(padded))
        encoded, x = [], shallow
        for level, block in enumerate(self.encoder):
            x = block(x)
            encoded.append(x)
            if level < len(self.merges):
                x = self.merges[level](x)
        latent = self.truncate(self.to_latent(x.mean(dim=(2, 3))))
        skips = encoded[::-1]
        modulations = [lambda decoded, e=e, m=m: m(decoded, e) for e, m in zip(skips, self.scale_shift)]
        decoded = self.decoder(self.start(x), latent, modulations)
        residual = up(self.reconstruction(shallow + decoded))
        return lr[:, :1] + residual[..., :height, :width]
