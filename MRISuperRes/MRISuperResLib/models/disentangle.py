"""The CNN + ViT feature-disentanglement network (`disentanglement-cnn-vit.txt`).

The paper's method: a super-resolution generator that combines a CNN (local detail) and a vision
transformer (global context), trained with extra losses that keep the low-resolution image's semantics in
the output: the cosine similarity of the **structure** and **texture** codes of a swapped autoencoder
(trained first: encoder E → a spatial structure code z_s and a texture vector z_t; generator G; adversarial
and swapped-GAN losses, Park et al. 2020) and of ViT features, between the input and the output.

Here:
- `CNNViT` (registered `cnn-vit`): a CNN branch (EDSR residual blocks on 2 × 2 pixel-unshuffled slices, as
  `edsr`) and a ViT branch (16 × 16-pixel patches embedded linearly, a depthwise convolution as position
  encoding so that any tile size works, pre-norm transformer layers with global attention over the tile's
  patches); the ViT tokens are projected, upsampled bilinearly onto the CNN's grid and fused with its features
  by a 1 × 1 convolution before the reconstruction. `vit_features` is the pooled token vector the ViT loss
  compares.
- `SwappedAutoencoder`: the paper's AE (four 3 × 3 convolution blocks of 64, 64, 32, 32 filters, max-pooling;
  z_s spatial at ¼ resolution, z_t a vector) with a generator whose normalisations z_t modulates. Used in
  training only (`training.priors`); it is not part of the shipped weights.

Choices where the paper is silent or our setting differs, and why:
- The paper's ViT is UNETR's (93 M parameters, pretrained for segmentation, fine-tuned self-supervised);
  that is far beyond a 2-core CPU, and no such weights are ours to ship. Our ViT is the generator's own
  branch, trained with it; the ViT loss uses its weights frozen for that term (so it cannot be satisfied
  by collapsing the features).
- The structure and texture losses compare the output's codes with the (pre-interpolated) input's, as the
  paper does; our input and output share one grid, so no centre-crop pairing is needed. The L1 loss on the
  truth is kept (the paper's SR objective is adversarial + the three cosine losses; we report PSNR).
- z_t has 64 dimensions (the paper: 256) and the AE is trained on 64-pixel patches (the paper: 256).
- The ViT attends over every patch of the tile it is given: training sees 16 tokens (64-pixel patches), a
  256-pixel tile at inference 256, so its context depends on the tile size (tiles overlap by 16 pixels).
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import measured_macs_per_pixel, register_architecture
from .blocks import ResidualBlock, check_context, padded_to_multiple, unshuffled

PATCH = 16   # pixels per ViT token side


class TransformerLayer(nn.Module):
    """Pre-norm multi-head self-attention and MLP over all tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.project = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    @staticmethod
    def attention_macs(inputs: tuple, output: torch.Tensor) -> int:
        b, length, dim = output.shape
        return 2 * b * length * length * dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, length, dim = tokens.shape
        q, k, v = self.qkv(self.norm1(tokens)).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, dim)
        tokens = tokens + self.project(attended)
        return tokens + self.mlp(self.norm2(tokens))


class ViTBranch(nn.Module):
    def __init__(self, in_channels: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, PATCH, stride=PATCH)
        self.position = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.layers = nn.ModuleList([TransformerLayer(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), H and W multiples of PATCH → token grid (B, dim, H/PATCH, W/PATCH)."""
        grid = self.embed(images)
        grid = grid + self.position(grid)
        b, dim, h, w = grid.shape
        tokens = grid.flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm(tokens).transpose(1, 2).reshape(b, dim, h, w)


@register_architecture("cnn-vit")
class CNNViT(nn.Module):
    def __init__(self, features: int = 48, blocks: int = 4, vit_dim: int = 96, vit_layers: int = 4,
                 heads: int = 4, context: int = 1, unshuffle: int = 2) -> None:
        super().__init__()
        self.context, self.unshuffle = context, unshuffle
        channels = 1 + 2 * context
        self.head = nn.Conv2d(channels * unshuffle ** 2, features, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(features) for _ in range(blocks)])
        self.vit = ViTBranch(channels, vit_dim, vit_layers, heads)
        self.context_projection = nn.Conv2d(vit_dim, features, 1)
        self.fuse = nn.Conv2d(2 * features, features, 1)
        self.tail = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, unshuffle ** 2, 3, padding=1))
        # The residual starts at zero: an untrained network returns the interpolated slice.
        nn.init.zeros_(self.tail[-1].weight), nn.init.zeros_(self.tail[-1].bias)

    @property
    def macs_per_output_pixel(self) -> int:
        return measured_macs_per_pixel(self, 1 + 2 * self.context)

    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        return padded_to_multiple(images, PATCH)

    def vit_features(self, images: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """The pooled ViT token vector (B, vit_dim) of single-channel or context-stacked images; `frozen`:
        gradients reach the images but not the ViT's weights."""
        if images.shape[1] == 1 and self.context:
            images = images.repeat(1, 1 + 2 * self.context, 1, 1)
        images = self._padded(images)
        if frozen:
            weights = {name: value.detach() for name, value in self.vit.named_parameters()}
            return torch.func.functional_call(self.vit, weights, (images,)).mean(dim=(2, 3))
        return self.vit(images).mean(dim=(2, 3))

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        check_context(lr, self.context)
        height, width = lr.shape[-2:]
        padded = self._padded(lr)
        down, up = unshuffled(*padded.shape[-2:], self.unshuffle)
        shallow = self.head(down(padded))
        local = self.body(shallow) + shallow
        context = nn.functional.interpolate(self.context_projection(self.vit(padded)), size=local.shape[-2:],
                                            mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([local, context], dim=1))
        return lr[:, :1] + up(self.tail(fused))[..., :height, :width]


class _Block(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


class ModulatedBlock(nn.Module):
    """A convolution whose instance-normalised output the texture code scales and shifts (AdaIN)."""

    def __init__(self, in_channels: int, out_channels: int, texture_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.style = nn.Linear(texture_dim, 2 * out_channels)

    def forward(self, x: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        scale, shift = self.style(texture)[..., None, None].chunk(2, dim=1)
        return nn.functional.leaky_relu(nn.functional.instance_norm(self.conv(x)) * (1 + scale) + shift, 0.2)


class SwappedAutoencoder(nn.Module):
    """E(x) = (z_s, z_t): z_s (B, structure_channels, H/4, W/4), z_t (B, texture_dim); G(z_s, z_t) → image."""

    def __init__(self, widths: tuple[int, ...] = (64, 64, 32, 32), structure_channels: int = 8,
                 texture_dim: int = 64) -> None:
        super().__init__()
        a, b, c, d = widths
        self.encoder = nn.Sequential(_Block(1, a), nn.MaxPool2d(2), _Block(a, b), nn.MaxPool2d(2),
                                     _Block(b, c), _Block(c, d))
        self.to_structure = nn.Conv2d(d, structure_channels, 1)
        self.to_texture = nn.Linear(d, texture_dim)
        self.decoder = nn.ModuleList([ModulatedBlock(structure_channels, d, texture_dim),
                                      ModulatedBlock(d, c, texture_dim), ModulatedBlock(c, b, texture_dim),
                                      ModulatedBlock(b, a, texture_dim)])
        self.to_image = nn.Conv2d(a, 1, 3, padding=1)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(images)
        return self.to_structure(features), self.to_texture(features.mean(dim=(2, 3)))

    def decode(self, structure: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        x = structure
        for index, block in enumerate(self.decoder):
            if index in (2, 3):
                x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(x, texture)
        return self.to_image(x)
