"""Stages that come before super-resolution training, and the losses they make possible.

- `generative_prior:` (TransMRSR): the network's decoder is first trained as a GAN generator on the
  high-resolution training patches (noise → mapping network → style-modulated Swin decoder → image; WGAN-GP
  critic), then the self-distilled truncation's centroids are computed once: k-means of latents sampled
  from the trained mapping network, stored in the network's `centroids` buffer.
- `disentanglement:` (the CNN + ViT network): a swapped autoencoder is first trained on high- and
  low-resolution patches (L1 reconstruction, adversarial and swapped-GAN terms against a WGAN-GP critic);
  during super-resolution training it is frozen, and the output's structure and texture codes, and its ViT
  features, are pulled towards the input's (cosine similarity, the paper's equations 7 and 8).

Each stage writes its result to the run folder (`prior.pt`, `autoencoder.pt`) and is skipped when that file
exists, so a resumed run does not repeat it (delete the file to redo a stage with new settings); a run that
starts from other weights (`initialise_from`) keeps their decoder and centroids. Under DDP the first process
runs the stages and the others load their results. `time_limit_minutes` counts super-resolution training
only, not these stages.

Departures from the papers' stages, and why: both adversarial games use the WGAN-GP critic of
`training.adversarial` (StyleSwin trains with a non-saturating loss and R1; the disentanglement paper weights
its adversarial and swap terms 0.7 with a log loss): one critic, already tested, for every stage, at 16–64
filters for the CPU. The autoencoder's adversarial and swap terms weigh 0.01 next to L1 reconstruction (a
short CPU run needs the codes to reconstruct first). The super-resolution stage of the disentanglement
network drops the adversarial term (we report PSNR; the WGAN-GP option of the loop stays available).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from ..errors import MRISuperResError
from ..models.disentangle import SwappedAutoencoder
from .adversarial import Critic, adversarial_term, critic_step
from .config import settings_from

ExtraLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class GenerativePriorSettings:
    steps: int = 1500
    learning_rate: float = 2e-4
    critic_features: int = 16
    gradient_penalty: float = 10.0
    latent_samples: int = 2048


@dataclass(frozen=True)
class DisentanglementSettings:
    autoencoder_steps: int = 1500
    learning_rate: float = 2e-4
    critic_features: int = 16
    gradient_penalty: float = 10.0
    adversarial_weight: float = 0.01      # of the adversarial and swapped-GAN terms next to L1 reconstruction
    structure: float = 0.05               # weights of the super-resolution stage's cosine losses
    texture: float = 0.05
    vit: float = 0.05


def _truth_patches(bank, batch_size: int, device: torch.device) -> torch.Tensor:
    batch, _ = bank.batch(batch_size)
    return batch[:, 1:2].to(device)


def _log(run_dir: Path, record: dict) -> None:
    with open(run_dir / "log.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")


def kmeans(points: torch.Tensor, clusters: int, seed: int = 0) -> torch.Tensor:
    """Centroids of `points` (N, D): scipy's k-means with k-means++ initialisation, seeded."""
    from scipy.cluster.vq import kmeans2

    centres, _ = kmeans2(points.double().numpy(), clusters, minit="++", seed=seed)
    return torch.from_numpy(centres).to(points.dtype)


def pretrain_generator(network, bank, settings: GenerativePriorSettings, patch_size: int, batch_size: int,
                       device: torch.device, run_dir: Path) -> None:
    """Train `network.decoder` (with its mapping network) as a GAN on high-resolution patches, then store
    the truncation centroids; or load both from `run_dir/prior.pt` when an earlier run made them."""
    saved = run_dir / "prior.pt"
    if saved.exists():
        network.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True), strict=False)
        print(f"generative prior loaded from {saved}", flush=True)
        return
    generator_parts = list(network.decoder.parameters()) + list(network.mapping.parameters())
    optimiser = torch.optim.Adam(generator_parts, lr=settings.learning_rate, betas=(0.0, 0.9))
    critic = Critic(settings.critic_features).to(device)
    critic_optimiser = torch.optim.Adam(critic.parameters(), lr=settings.learning_rate, betas=(0.0, 0.9))
    latent_dim = network.centroids.shape[1]
    size = patch_size - patch_size % 16
    started = time.time()
    for step in tqdm(range(settings.steps), desc="generative prior", unit="step", disable=None):
        real = _truth_patches(bank, batch_size, device)[..., :size, :size]
        fake = network.generate(torch.randn(batch_size, latent_dim, device=device), size, size)
        critic_value = critic_step(critic, critic_optimiser, real, fake, settings.gradient_penalty)
        loss = adversarial_term(critic, fake)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if (step + 1) % 250 == 0 or step + 1 == settings.steps:
            _log(run_dir, {"stage": "generative prior", "step": step + 1, "critic": critic_value,
                           "generator": loss.item(), "seconds": round(time.time() - started)})
    with torch.no_grad():
        latents = network.mapping(torch.randn(settings.latent_samples, latent_dim, device=device))
        network.centroids.copy_(kmeans(latents.cpu(), network.centroids.shape[0]).to(device))
        network.has_centroids.fill_(True)
    prior = {k: v.cpu() for k, v in network.state_dict().items()
             if k.startswith(("decoder.", "mapping.", "centroids", "has_centroids"))}
    torch.save(prior, saved)


def pretrain_autoencoder(bank, settings: DisentanglementSettings, batch_size: int,
                         device: torch.device, run_dir: Path) -> SwappedAutoencoder:
    """The swapped autoencoder, trained on half high-, half low-resolution patches (or loaded from
    `run_dir/autoencoder.pt`), frozen."""
    autoencoder = SwappedAutoencoder().to(device)
    saved = run_dir / "autoencoder.pt"
    if saved.exists():
        autoencoder.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
        print(f"swapped autoencoder loaded from {saved}", flush=True)
        return autoencoder.eval().requires_grad_(False)
    optimiser = torch.optim.Adam(autoencoder.parameters(), lr=settings.learning_rate, betas=(0.5, 0.99))
    critic = Critic(settings.critic_features).to(device)
    critic_optimiser = torch.optim.Adam(critic.parameters(), lr=settings.learning_rate, betas=(0.0, 0.9))
    started = time.time()
    half = batch_size // 2
    for step in tqdm(range(settings.autoencoder_steps), desc="swapped autoencoder", unit="step", disable=None):
        batch, _ = bank.batch(batch_size)
        images = torch.cat([batch[:half, 1:2], batch[half:, :1]]).to(device)   # truth, then low resolution
        structure, texture = autoencoder.encode(images)
        reconstructed = autoencoder.decode(structure, texture)
        swapped = autoencoder.decode(structure, texture.roll(1, dims=0))
        fake = torch.cat([reconstructed, swapped])
        critic_value = critic_step(critic, critic_optimiser, torch.cat([images, images]), fake,
                                    settings.gradient_penalty)
        reconstruction = nn.functional.l1_loss(reconstructed, images)
        loss = reconstruction + settings.adversarial_weight * adversarial_term(critic, fake)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if (step + 1) % 250 == 0 or step + 1 == settings.autoencoder_steps:
            _log(run_dir, {"stage": "swapped autoencoder", "step": step + 1, "reconstruction": reconstruction.item(),
                           "critic": critic_value, "seconds": round(time.time() - started)})
    torch.save({k: v.cpu() for k, v in autoencoder.state_dict().items()}, saved)
    return autoencoder.eval().requires_grad_(False)


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean()


def disentanglement_loss(autoencoder: SwappedAutoencoder, network, settings: DisentanglementSettings) -> ExtraLoss:
    """λ_str (1 − cos(z_s(x), z_s(y))) + λ_tex (1 − cos(z_t(x), z_t(y))) + λ_ViT (1 − cos(f(x), f(y))) between
    the input slice x and the output y; the ViT term through the network's own ViT branch, its weights
    held fixed for this term."""
    def loss(lr: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, dict]:
        source = lr[:, :1]
        with torch.no_grad():
            source_structure, source_texture = autoencoder.encode(source)
        structure, texture = autoencoder.encode(output)
        parts = {"structure": _cosine_distance(structure, source_structure),
                 "texture": _cosine_distance(texture, source_texture)}
        if settings.vit:
            with torch.no_grad():
                source_features = network.vit_features(source)
            parts["vit"] = _cosine_distance(network.vit_features(output, frozen=True), source_features)
        total = sum(getattr(settings, name) * value for name, value in parts.items())
        return total, {name: value.item() for name, value in parts.items()}
    return loss


def prepare(config, network, bank, device: torch.device, run_dir: Path, fresh: bool) -> tuple[ExtraLoss | None, str]:
    """Run the stages `config` asks for before super-resolution training; returns the extra loss for that
    training (or None) and a note for the model card. `fresh`: the network has not been trained yet (not a
    resumed run), so a generative prior may still be put into it."""
    note, extra = "", None
    if config.generative_prior is not None:
        if not hasattr(network, "generate"):
            raise MRISuperResError(f"generative_prior needs a network with a generator decoder (transmrsr), "
                                   f"not {config.architecture}.")
        settings = settings_from(GenerativePriorSettings, config.generative_prior, "generative_prior")
        if fresh:
            pretrain_generator(network, bank, settings, config.patch_size, config.batch_size, device, run_dir)
        note = f", decoder pretrained as a GAN for {settings.steps} steps (generative prior)"
    if config.disentanglement is not None:
        if not hasattr(network, "vit_features"):
            raise MRISuperResError(f"disentanglement needs a network with a ViT branch (cnn-vit), "
                                   f"not {config.architecture}.")
        settings = settings_from(DisentanglementSettings, config.disentanglement, "disentanglement")
        autoencoder = pretrain_autoencoder(bank, settings, config.batch_size, device, run_dir)
        extra = disentanglement_loss(autoencoder, network, settings)
        note += (f", swapped autoencoder {settings.autoencoder_steps} steps; losses structure {settings.structure:g}, "
                 f"texture {settings.texture:g}, ViT {settings.vit:g}")
    # Parts that only generation uses (the mapping network, the learned constant, the image layer) get no
    # gradient in super-resolution training: frozen, so that DDP does not wait for them.
    for part in getattr(network, "generation_only", lambda: [])():
        part.requires_grad_(False)
    return extra, note
