"""Shifted-window transformer layers on feature maps of any size (Swin: Liu et al., 2021), shared by the
transformer families (`transmrsr`).

Feature maps stay in the convolutional layout (B, C, H, W) between layers. A layer pads its input to whole
windows; padded tokens form their own region of the attention mask, so real tokens never attend to them,
and the padding is cropped after. Attention is computed per window, so its memory is bounded by
B · windows · heads · window⁴ whatever the tile size.
"""

from __future__ import annotations

import torch
from torch import nn


def _regions(height: int, width: int, padded_h: int, padded_w: int, window: int, shift: int,
             device: torch.device) -> torch.Tensor:
    """Region label of every position of the padded, rolled grid: tokens attend only within their label
    (Swin's mask for the wrapped-around strips, and padding kept apart)."""
    labels = torch.zeros(padded_h, padded_w, dtype=torch.long, device=device)
    if shift:
        cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        for i, rows in enumerate(cuts):
            for j, columns in enumerate(cuts):
                labels[rows, columns] = 3 * i + j
    valid = torch.zeros(padded_h, padded_w, dtype=torch.bool, device=device)
    valid[:height, :width] = True
    valid = torch.roll(valid, (-shift, -shift), (0, 1))
    return torch.where(valid, labels, torch.full_like(labels, -1))


def _windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) → (B · H/w · W/w, w², C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _merge_windows(x: torch.Tensor, window: int, batch: int, height: int, width: int) -> torch.Tensor:
    c = x.shape[-1]
    x = x.view(batch, height // window, width // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(self, channels: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(channels, 3 * channels)
        self.project = nn.Linear(channels, channels)
        self.bias_table = nn.Parameter(torch.zeros(heads, (2 * window - 1) ** 2))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coordinates = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coordinates[:, :, None] - coordinates[:, None, :]) + window - 1
        self.register_buffer("bias_index", relative[0] * (2 * window - 1) + relative[1], persistent=False)

    @staticmethod
    def attention_macs(inputs: tuple, output: torch.Tensor) -> int:
        """Query·key and weights·value products: 2 · w² per token and channel."""
        n, length, channels = output.shape
        return 2 * n * length * length * channels

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """`tokens` (B · windows, w², C), batch-major; `mask` (windows, w², w²) additive (0 or −inf), the
        same for every image of the batch, or None."""
        n, length, channels = tokens.shape
        q, k, v = self.qkv(tokens).view(batch, n // batch, length, 3, self.heads, -1).permute(3, 0, 1, 4, 2, 5)
        bias = self.bias_table[:, self.bias_index]                   # (heads, w², w²)
        if mask is not None:
            bias = bias + mask[:, None]                              # (windows, heads, w², w²)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.project(attended.transpose(2, 3).reshape(n, length, channels))


class SwinLayer(nn.Module):
    """One transformer layer (attention and MLP, each pre-normalised with a residual) on windows shifted by
    `shift`. With `style_dim`, the normalisations are adaptive: their scale and shift come from a style
    vector (each token normalised over its channels; StyleSwin's AdaIN normalises channels over positions)."""

    def __init__(self, channels: int, heads: int, window: int, shift: int, mlp_ratio: float = 2.0,
                 style_dim: int = 0) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        affine = not style_dim
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=affine)
        self.norm2 = nn.LayerNorm(channels, elementwise_affine=affine)
        self.style = nn.Linear(style_dim, 4 * channels) if style_dim else None
        if self.style is not None:
            nn.init.zeros_(self.style.weight), nn.init.zeros_(self.style.bias)
        self.attention = WindowAttention(channels, heads, window)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def _modulated(self, norm: nn.LayerNorm, x: torch.Tensor, modulation: torch.Tensor | None) -> torch.Tensor:
        x = norm(x)
        if modulation is None:
            return x
        scale, shift = modulation
        return x * (1 + scale[:, None, None]) + shift[:, None, None]

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        window = self.window
        shift = self.shift if min(h, w) > window else 0
        padded_h, padded_w = h + -h % window, w + -w % window
        grid = nn.functional.pad(x, (0, padded_w - w, 0, padded_h - h)).permute(0, 2, 3, 1)   # (B, H, W, C)
        modulations = [None, None]
        if self.style is not None:
            modulations = list(self.style(style).view(b, 2, 2, c).unbind(1))
            modulations = [m.unbind(1) for m in modulations]
        mask = None
        if shift or padded_h != h or padded_w != w:
            labels = _windows(_regions(h, w, padded_h, padded_w, window, shift, x.device)[None, ..., None], window)[..., 0]
            mask = torch.zeros(labels.shape + (labels.shape[-1],), dtype=x.dtype, device=x.device)
            mask.masked_fill_(labels[:, :, None] != labels[:, None, :], float("-inf"))

        shifted = torch.roll(grid, (-shift, -shift), (1, 2)) if shift else grid
        tokens = _windows(self._modulated(self.norm1, shifted, modulations[0]), window)
        attended = _merge_windows(self.attention(tokens, mask, b), window, b, padded_h, padded_w)
        if shift:
            attended = torch.roll(attended, (shift, shift), (1, 2))
        grid = grid + attended
        grid = grid + self.mlp(self._modulated(self.norm2, grid, modulations[1]))
        return grid[:, :h, :w].permute(0, 3, 1, 2).contiguous()


class SwinBlock(nn.Module):
    """Two Swin layers, the second on windows shifted by half a window (a "basic layer" of depth 2)."""

    def __init__(self, channels: int, heads: int, window: int, style_dim: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList([SwinLayer(channels, heads, window, shift, style_dim=style_dim)
                                     for shift in (0, window // 2)])

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, style)
        return x


class ResidualSwinBlock(nn.Module):
    """RSTB: a Swin block, a 3 × 3 convolution, and a shortcut from its input."""

    def __init__(self, channels: int, heads: int, window: int) -> None:
        super().__init__()
        self.swin = SwinBlock(channels, heads, window)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.swin(x))


class PatchMerging(nn.Module):
    """Halves the grid: every 2 × 2 group of positions is concatenated and projected linearly."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.project = nn.Linear(4 * in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = nn.functional.pixel_unshuffle(x, 2).permute(0, 2, 3, 1)
        return self.project(self.norm(merged)).permute(0, 3, 1, 2).contiguous()
