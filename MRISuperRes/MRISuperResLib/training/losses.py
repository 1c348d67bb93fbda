"""Training losses: L1, perceptual and Gram-matrix texture losses on wavelet scattering features.

There are no ImageNet weights here, so the perceptual and texture losses use Morlet wavelet scattering
(kymatio `Scattering2D`, J = 2, L = 8, second order: 81 channels at 1/4 resolution), whose filters need no
training. A VGG19 feature extractor is kept as an option; it loads its weights from a file the user
supplies (torchvision's `vgg19` state-dict layout for `features.*`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..scattering import Scattering

# conv channel plan of VGG19's `features` up to relu3_4 ("M" = max-pool), with torchvision's layer indices.
VGG19_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256]


class ScatteringFeatures(nn.Module):
    """Second-order Morlet scattering of single-channel images (B, 1, H, W) → (B, 81, H/4, W/4), with the
    core library's batched transform (kymatio's filters, built once per image shape)."""

    def __init__(self, J: int = 2, L: int = 8) -> None:
        super().__init__()
        self.scattering = Scattering(J, L)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scattering(images[:, 0])


class VGG19Features(nn.Module):
    """VGG19's convolutional layers up to relu3_4, weights loaded from a user-supplied file."""

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        layers, channels = [], 3
        for entry in VGG19_PLAN:
            if entry == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU(inplace=True)]
                channels = entry
        self.features = nn.Sequential(*layers)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                       if k.startswith("features.") and int(k.split(".")[1]) < len(layers)})
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images.repeat(1, 3, 1, 1))


def gram(features: torch.Tensor) -> torch.Tensor:
    """Channel correlations (B, C, C), normalised by the number of positions."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


class CompositeLoss(nn.Module):
    """w_l1 · L1 + w_perceptual · relative L1 of features + w_texture · relative MSE of their Gram matrices;
    returns the total and its parts."""

    def __init__(self, l1: float = 1.0, perceptual: float = 0.0, texture: float = 0.0,
                 features: str = "scattering", vgg19_weights: str | None = None, feature_patches: int = 0) -> None:
        super().__init__()
        self.weights = {"l1": l1, "perceptual": perceptual, "texture": texture}
        # Feature losses on the first `feature_patches` patches of a batch only (0: all): scattering is the
        # expensive part of a training step on a CPU.
        self.feature_patches = feature_patches
        self.extractor = None
        if perceptual or texture:
            if features == "scattering":
                self.extractor = ScatteringFeatures()
            elif features == "vgg19":
                if not vgg19_weights:
                    raise ValueError("the vgg19 features need a weights file (vgg19_weights in the config)")
                self.extractor = VGG19Features(vgg19_weights)
            else:
                raise ValueError(f"unknown feature extractor {features!r}; use scattering or vgg19")

    def forward(self, output: torch.Tensor, truth: torch.Tensor, texture_target: torch.Tensor | None = None,
                has_texture: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """`texture_target`: the swapped reference features (B, 81, h, w) of texture transfer; the texture
        loss then compares the output's Gram matrices with theirs (where `has_texture`), as the texture-
        transfer paper does, instead of with the truth's."""
        parts = {"l1": nn.functional.l1_loss(output, truth)}
        if self.extractor is not None:
            count = self.feature_patches or output.shape[0]
            output_features, truth_features = self.extractor(output[:count]), self.extractor(truth[:count])
            if texture_target is not None:
                chosen = has_texture[:count]
                if chosen.any():
                    target_gram = gram(texture_target[:count][chosen])
                    parts["texture"] = (nn.functional.mse_loss(gram(output_features[chosen]), target_gram)
                                        / (target_gram.pow(2).mean() + 1e-12))
                else:
                    parts["texture"] = output.new_zeros(())
            # Both relative to the truth's own feature scale, so that their weights do not depend on the
            # extractor's units (scattering coefficients of [0, 1] images are about 1e-2).
            if self.weights["perceptual"]:
                parts["perceptual"] = (nn.functional.l1_loss(output_features, truth_features)
                                       / (truth_features.abs().mean() + 1e-8))
            if self.weights["texture"] and texture_target is None:
                truth_gram = gram(truth_features)
                parts["texture"] = (nn.functional.mse_loss(gram(output_features), truth_gram)
                                    / (truth_gram.pow(2).mean() + 1e-12))
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {name: value.item() for name, value in parts.items()}
