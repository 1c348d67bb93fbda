"""Texture-transfer inputs for training batches, made with the same functions inference uses.

Every patch of a batch gets one of three texture sources (probabilities in the config's `texture:`):

- paired: its own reference patch (another contrast, possibly misregistered), matched within the window;
- bank: a bank from the *other half* of the batch's truth patches, as they are and transposed (unrelated
  anatomy and subjects: the unpaired and self modes of inference), searched whole; never its own truth;
- none: zeros, so that the model works without texture too.
"""

from __future__ import annotations

import random

import torch

from ..scattering import Scattering
from ..texture import (FOREGROUND_LEVEL, MatchSettings, blur_like_input, build_bank, match_bank,
                                    match_window, upsample_features)

DEFAULT_PROBABILITIES = {"paired": 0.5, "bank": 0.35}


def _bank_from(truths: torch.Tensor, factor: float, scattering: Scattering, size: int):
    sharp = torch.cat([truths, truths.transpose(1, 2)])
    return build_bank([scattering(blur_like_input(sharp, (factor, 1)))], [scattering(sharp)], size)


def texture_inputs(lr: torch.Tensor, truth: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor,
                   factor: float, rng: random.Random, scattering: Scattering,
                   settings: MatchSettings = MatchSettings(), probabilities: dict | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, H, W) patches → texture input (B, 82, h, w) on the scattering grid (swapped features and
    confidence) and a (B,) flag of the patches that got texture."""
    p = {**DEFAULT_PROBABILITIES, **(probabilities or {})}
    b = lr.shape[0]
    with torch.no_grad():
        query = scattering(lr[:, 0])
        swapped = torch.zeros_like(query)
        confidence = torch.zeros_like(query[:, :1])
        modes = []
        for item in range(b):
            u = rng.random()
            has_reference = bool(mask[item].mean() > 0.5)
            modes.append("paired" if has_reference and u < p["paired"] else
                         "bank" if u < p["paired"] + p["bank"] else "none")
        paired = [i for i, m in enumerate(modes) if m == "paired"]
        if paired:
            sharp = reference[paired, 0]
            s, c, _ = match_window(query[paired], scattering(blur_like_input(sharp, (factor, 1))), scattering(sharp),
                                settings.window)
            swapped[paired], confidence[paired] = s, c * (query[paired, :1] > FOREGROUND_LEVEL)
        half = b // 2
        for queries, donors in ((range(half), range(half, b)), (range(half, b), range(half))):
            wanted = [i for i in queries if modes[i] == "bank"]
            if wanted:
                bank = _bank_from(truth[list(donors), 0], factor, scattering, settings.bank_size)
                s, c, _ = match_bank(query[wanted], bank, settings.memory_bytes)
                swapped[wanted], confidence[wanted] = s, c
        has_texture = torch.tensor([m != "none" for m in modes], device=lr.device)
    return torch.cat([swapped, confidence], 1), has_texture


def placed_texture(network: torch.nn.Module, texture: torch.Tensor, image_shape: tuple[int, int],
                   scattering: Scattering) -> torch.Tensor:
    """The network's projection of `texture_inputs`' texture, placed on the patches' pixels (as inference
    places it), with gradients for the projection."""
    return upsample_features(network.texture.project(texture), image_shape, scattering)
