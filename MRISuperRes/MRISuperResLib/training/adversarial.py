"""The progressive multi-contrast paper's adversarial stage: a WGAN-GP critic and its losses.

The paper's discriminator: three blocks of two 3×3 convolutions (padding 1) with ReLUs and a 2×2 max-pool
(64, 64, 128, 128, 256, 256 filters), then fully connected layers of 128 and 1 neurons; the generator adds
−E[D(G(x))] to its loss (equation 3), the critic minimises E[D(G(x))] − E[D(y)] + λ·E[(‖∇D(x̃)‖ − 1)²] on
random interpolates x̃ (equation 8). Here the critic's widths scale with `features` (64: the paper's) and
its first fully connected layer takes an adaptive 8 × 8 pooling, so that any patch size works. Used as an
optional fine-tuning stage (`adversarial:` in a training config), starting from a network trained without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AdversarialSettings:
    weight: float = 1e-3          # of the generator's adversarial term next to L1 (the paper's λ is not given)
    gradient_penalty: float = 10.0
    features: int = 32
    learning_rate: float = 1e-4


class Critic(nn.Module):
    def __init__(self, features: int = 64) -> None:
        super().__init__()
        layers, channels = [], 1
        for width in (features, 2 * features, 4 * features):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(8))
        self.score = nn.Sequential(nn.Flatten(), nn.Linear(channels * 64, 128), nn.ReLU(inplace=True), nn.Linear(128, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(images))


def critic_loss(critic: Critic, real: torch.Tensor, fake: torch.Tensor, penalty: float) -> torch.Tensor:
    """E[D(fake)] − E[D(real)] + penalty · E[(‖∇D(x̃)‖₂ − 1)²], x̃ between real and fake."""
    fake = fake.detach()
    alpha = torch.rand((real.shape[0], 1, 1, 1), device=real.device, dtype=real.dtype)
    between = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    gradients, = torch.autograd.grad(critic(between).sum(), between, create_graph=True)
    gradient_penalty = ((gradients.flatten(1).norm(dim=1) - 1) ** 2).mean()
    return critic(fake).mean() - critic(real).mean() + penalty * gradient_penalty


def generator_loss(critic: Critic, fake: torch.Tensor) -> torch.Tensor:
    return -critic(fake).mean()


def critic_step(critic: Critic, optimiser: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                penalty: float) -> float:
    """One optimiser step of the critic on `real` against (detached) `fake`; returns its loss."""
    loss = critic_loss(critic, real, fake, penalty)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return loss.item()


def adversarial_term(critic: Critic, fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial loss, with the critic's weights left out of its gradient."""
    critic.requires_grad_(False)
    term = generator_loss(critic, fake)
    critic.requires_grad_(True)
    return term
