"""EDSR-style residual network run at half resolution: the quality tier.

EDSR (Lim et al., 2017): residual blocks of two 3×3 convolutions without batch normalisation, a long skip.
Here the pre-interpolated slice, its 2.5D neighbours and the reference are first pixel-unshuffled by 2
(every 2 × 2 block becomes 4 channels), so each 3×3 convolution sees a 6 × 6 pixel window and costs a
quarter per output pixel; the output is pixel-shuffled back and added to the slice. Measured on 2 CPU
threads (channels_last, float32): a wide body at ¼ of the pixels gives 60–85 GMAC/s against 5–20 for
the thin full-resolution networks, so width is cheap here. Inputs whose sides are odd are padded by
replication and cropped back.

2.5D context: `context` neighbouring slices on each side of the same plane come as extra input channels
(`lr` is then (B, 1 + 2 · context, H, W), the slice itself first). In the planes that hold a thick axis,
those neighbours lie along a truly high-resolution axis, so they carry real detail.

Texture transfer (`texture_transfer=True`, the design papers' method on this backbone): the projected,
placed texture map (`blocks.TextureBranch`) is averaged over each 2 × 2 block onto the unshuffled
grid and added to the head's features, the "initial layer" the paper concatenates swapped features to.
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import register_architecture
from .blocks import ResidualBlock, check_context, reference_input, texture_branch, unshuffled, zero_padded_conv


@register_architecture("edsr")
class EDSR(nn.Module):
    def __init__(self, features: int = 64, blocks: int = 6, context: int = 1, use_reference: bool = False,
                 unshuffle: int = 2, texture_transfer: bool = False) -> None:
        super().__init__()
        self.context, self.use_reference, self.unshuffle = context, use_reference, unshuffle
        in_channels = 1 + 2 * context + (2 if use_reference else 0)
        self.head = zero_padded_conv(in_channels * unshuffle ** 2, features)
        self.body = nn.Sequential(*[ResidualBlock(features) for _ in range(blocks)],
                                  zero_padded_conv(features, features))
        self.tail = zero_padded_conv(features, unshuffle ** 2)
        self.texture = texture_branch(features, texture_transfer)

    @property
    def macs_per_output_pixel(self) -> int:
        convolutions = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        return sum(m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                   for m in convolutions) // self.unshuffle ** 2

    def adaptation_parameters(self) -> list[nn.Parameter]:
        """What per-scan adaptation fine-tunes without a reference: all but the head and the first half of the
        residual blocks.
        The backward pass then stops halfway, so a step costs about half (0.49 against 0.91 s, `edsr-large`,
        one thread) and 1.8x the steps fit the same seconds; and the early features, learnt on every training
        subject, are not pulled towards one scan's own planes, which on a scan whose acquired planes differ
        from the thick axis's (the spine val/ case) made full fine-tuning lose 0.18 dB. Used without a
        reference (`adapt.adapted_parameters`; README, *Adaptation, later half only*)."""
        frozen = {id(p) for module in (self.head, *list(self.body)[:len(self.body) // 2]) for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def forward(self, lr: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None, texture: torch.Tensor | None = None) -> torch.Tensor:
        check_context(lr, self.context)
        inputs = [lr]
        if self.use_reference:
            inputs.append(reference_input(lr[:, :1], reference, reference_mask))
        down, up = unshuffled(*lr.shape[-2:], self.unshuffle)
        shallow = self.head(down(torch.cat(inputs, dim=1)))
        if self.texture is not None:
            if texture is not None:
                texture = down(texture).unflatten(1, (-1, self.unshuffle ** 2)).mean(2)
            shallow = shallow + self.texture(texture, shallow)
        return lr[:, :1] + up(self.tail(self.body(shallow) + shallow))
