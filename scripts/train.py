#!/usr/bin/env python3
"""Train a registered 2D architecture on real scans; seeded, resumable, logging as it goes.

    python scripts/train.py scripts/configs/srcnn-ref.yaml --data ../shared/data --threads 2

Checkpoints go to `runs/<name>/checkpoint.pt` every `checkpoint_every` steps (run the same command
again to resume); the final weights go to `runs/<name>/<name>.pt` together with `card.json`, the
model-card entry to put in `MRISuperRes/Resources/Models/models.json` (`--install` does that).
Uses the GPU when there is one; under `torchrun` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

import _paths  # noqa: F401
from losses import CompositeLoss
from texture_training import texture_inputs
from training_data import Degradations, PairSpec, cut_patches, degrade_instance, load_scans
from MRISuperResLib.models.architectures import build_architecture, macs_per_pixel
from MRISuperResLib.models.registry import DEFAULT_MODELS_DIR, ModelRegistry, sha256_of
from MRISuperResLib.scattering import Scattering

REPO = Path(__file__).resolve().parents[1]


def specs(entries: list[dict]) -> list[PairSpec]:
    return [PairSpec(e["target"], e.get("reference"), e.get("mask"), tuple(e["axes"])) for e in entries]


class PatchBank:
    """A pool of patches from degraded instances (each with its thick-slice factor), refreshed one instance
    at a time."""

    def __init__(self, scans, config: dict, rng: random.Random) -> None:
        self.scans, self.config, self.rng = scans, config, rng
        self.degradations = Degradations.from_config(config)
        self.groups: list[tuple[np.ndarray, int]] = [self._fresh_group() for _ in range(config["pool_instances"])]

    def _fresh_group(self) -> tuple[np.ndarray, int]:
        c = self.config
        while True:
            instance = degrade_instance(self.rng.choice(self.scans), self.rng, self.degradations)
            patches = cut_patches(instance, c["patches_per_instance"], c["patch_size"], self.rng,
                                  c["shift_probability"], c["max_shift"], c["absent_probability"],
                                  c.get("rotation_probability", 0.0), c.get("max_rotation_degrees", 0.0))
            if patches:
                return np.stack(patches), instance.factor

    def refresh(self) -> None:
        self.groups[self.rng.randrange(len(self.groups))] = self._fresh_group()

    def batch(self, size: int, same_factor: bool = False) -> tuple[torch.Tensor, int | None]:
        """A batch of patches; with `same_factor`, all of one thick-slice factor (texture transfer blurs the
        reference by it), which is returned too."""
        groups, factor = self.groups, None
        if same_factor:
            factor = self.groups[self.rng.randrange(len(self.groups))][1]
            groups = [g for g in self.groups if g[1] == factor]
        picks = [groups[self.rng.randrange(len(groups))][0] for _ in range(size)]
        return torch.from_numpy(np.stack([g[self.rng.randrange(len(g))] for g in picks])), factor


def fixed_validation_set(scans, config: dict, seed: int, inplane: bool = False) -> list[tuple[torch.Tensor, int]]:
    """Validation patches per thick-slice factor (2, 4, 6), or with `inplane` per in-plane factor (2, 4), the same
    at every evaluation."""
    rng = random.Random(seed)
    by_factor = []
    for factor in (2, 4) if inplane else (2, 4, 6):
        degradations = Degradations(factors=(factor,), inplane_probability=float(inplane), inplane_factors=(factor,))
        patches = []
        for scan in scans:
            instance = degrade_instance(scan, rng, degradations)
            patches += cut_patches(instance, 32, config["patch_size"], rng, 0.0, config["max_shift"], 0.0)
        by_factor.append((torch.from_numpy(np.stack(patches)), factor))
    return by_factor


def psnr_gain(network: torch.nn.Module, validation: list[tuple[torch.Tensor, int]], device: torch.device,
              scattering: Scattering | None = None) -> dict:
    """PSNR (data range 1, MSE pooled over all validation patches) of cubic and of the network with and
    without its reference (and, for texture transfer, with its reference as paired texture); pooled,
    because per-patch PSNR is infinite on blank background patches."""
    network.eval()
    errors: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for patches, factor in validation:
            lr, truth, ref, mask = (patches[:, i:i + 1].to(device) for i in range(4))
            outputs = {"cubic": lr, "model_ref": network(lr, ref, mask),
                       "model_noref": network(lr, torch.zeros_like(ref), torch.zeros_like(mask))}
            if scattering is not None:
                texture, _, _ = texture_inputs(lr, truth, ref, mask, factor, random.Random(0), scattering,
                                               probabilities={"paired": 1.0, "bank": 0.0})
                outputs["model_ref_texture"] = network(lr, ref, mask, texture)
            for name, output in outputs.items():
                errors.setdefault(name, []).append(((output - truth) ** 2).flatten())
    network.train()
    return {name: float(-10 * torch.log10(torch.cat(e).mean())) for name, e in errors.items()}


def initialise_from(network: torch.nn.Module, model_name: str) -> None:
    """Start a texture-transfer network from its backbone's shipped weights (its texture branch starts at zero)."""
    registry = ModelRegistry()
    card = registry.get(model_name)
    state = torch.load(registry.verified_weights(card), map_location="cpu", weights_only=True)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("texture.") for key in missing):
        raise SystemExit(f"{model_name}'s weights do not fit this architecture: missing {missing}, unexpected {unexpected}")
    print(f"initialised from {model_name}; new: {', '.join(missing)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--steps", type=int, help="override the config's step count")
    parser.add_argument("--install", action="store_true", help="copy the weights and card into the registry")
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    if args.steps:
        config["steps"] = args.steps
    distributed = "LOCAL_RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    seed = config["seed"] + rank
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)

    run_dir = args.runs / config["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "log.jsonl", "a") if rank == 0 else None
    network = build_architecture(config["architecture"], config["arguments"]).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config["learning_rate"])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, config["lr_milestones"], 0.3)
    rng = random.Random(seed)
    step = 0
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(state["rng"])
        step = state["step"]
        print(f"resumed at step {step}")
    elif config.get("initialise_from"):
        initialise_from(network, config["initialise_from"])
    model = torch.nn.parallel.DistributedDataParallel(network) if distributed else network

    started = time.time()
    bank = PatchBank(load_scans(args.data, specs(config["train"])), config, rng)
    val_scans = load_scans(args.data, specs(config["val"]))
    validation = fixed_validation_set(val_scans, config, 12345)
    # Models trained on in-plane pairs are also validated on them, under their own key; like
    # scripts/evaluate.py, the in-plane axes are i and j.
    inplane_scans = [dataclasses.replace(scan, spec=dataclasses.replace(scan.spec, axes=(0, 1))) for scan in val_scans]
    validation_inplane = fixed_validation_set(inplane_scans, config, 12345, inplane=True) \
        if bank.degradations.inplane_probability else None
    print(f"bank ready in {time.time() - started:.0f} s; {sum(len(p) for p, _ in validation)} validation patches", flush=True)
    loss_fn = CompositeLoss(**config.get("loss", {})).to(device)
    # Texture transfer: scattering features, matching and swapping per batch, as at inference.
    scattering = Scattering() if config["arguments"].get("texture_transfer") else None
    running, running_parts = [], []
    while step < config["steps"]:
        if step % config["refresh_every"] == 0 and step:
            bank.refresh()
        batch, factor = bank.batch(config["batch_size"], same_factor=scattering is not None)
        lr, truth, ref, mask = (batch[:, i:i + 1].to(device) for i in range(4))
        if scattering is None:
            loss, parts = loss_fn(model(lr, ref, mask), truth)
        else:
            texture, swapped, has_texture = texture_inputs(lr, truth, ref, mask, factor, rng, scattering,
                                                           probabilities=config.get("texture"))
            loss, parts = loss_fn(model(lr, ref, mask, texture), truth, swapped, has_texture)
        running_parts.append(parts)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        running.append(loss.item())
        if rank == 0 and (step % config["checkpoint_every"] == 0 or step == config["steps"]):
            torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": rng.getstate(), "step": step}, checkpoint)
        if rank == 0 and (step % config["validate_every"] == 0 or step == config["steps"]):
            record = {"step": step, "loss": float(np.mean(running)),
                      **{name: float(np.mean([p[name] for p in running_parts])) for name in running_parts[0]},
                      "seconds": round(time.time() - started),
                      "val_psnr": psnr_gain(network, validation, device, scattering)}
            if validation_inplane:
                record["val_psnr_inplane"] = psnr_gain(network, validation_inplane, device, scattering)
            running, running_parts = [], []
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()

    if rank == 0:
        weights = run_dir / f"{config['name']}.pt"
        torch.save({k: v.cpu() for k, v in network.state_dict().items()}, weights)
        scores = psnr_gain(network, validation, device, scattering)
        card = {
            "name": config["name"], "title": config["title"], "description": config["description"],
            "architecture": config["architecture"], "arguments": config["arguments"],
            "weights": weights.name, "sha256": sha256_of(weights),
            "parameters": sum(p.numel() for p in network.parameters()),
            "macs_per_pixel": macs_per_pixel(network),
            "uses_reference": config["uses_reference"], "degradation": config["degradation"],
            "factors": config["factors"],
            **({"inplane_factors": list(bank.degradations.inplane_factors)} if validation_inplane else {}),
            "training_data": "; ".join(sorted({e["target"].split("/")[1] for e in config["train"]}))
                             + " (see README acknowledgements for licences)",
            "training": f"{step} steps of {config['batch_size']}×{config['patch_size']}² patches, "
                        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
                        f"config {args.config.name}, seed {config['seed']}"
                        + (f", fine-tuned from {config['initialise_from']}" if config.get("initialise_from") else ""),
            "validation": {"patch_psnr_db": scores,
                           **({"patch_psnr_db_inplane": psnr_gain(network, validation_inplane, device, scattering)}
                              if validation_inplane else {})},
        }
        if config.get("reference_modes"):
            card["reference_modes"] = config["reference_modes"]
        (run_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(card, indent=2))
        if args.install:
            install(weights, card)
    if distributed:
        dist.destroy_process_group()


def install(weights: Path, card: dict) -> None:
    manifest_path = DEFAULT_MODELS_DIR / "models.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": []}
    names = [m["name"] for m in manifest["models"]]
    if card["name"] in names:  # keep its place in the list; scripts/evaluate.py --update-cards adds the val/ scores
        manifest["models"][names.index(card["name"])] = card
    else:
        manifest["models"].append(card)
    shutil.copy(weights, DEFAULT_MODELS_DIR / weights.name)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"installed {card['name']} into {manifest_path}")


if __name__ == "__main__":
    main()
