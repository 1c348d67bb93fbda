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
from training_data import PairSpec, cut_patches, degrade_instance, load_scans
from MRISuperResLib.models.architectures import build_architecture, macs_per_pixel
from MRISuperResLib.models.registry import DEFAULT_MODELS_DIR, sha256_of

REPO = Path(__file__).resolve().parents[1]


def specs(entries: list[dict]) -> list[PairSpec]:
    return [PairSpec(e["target"], e.get("reference"), e.get("mask"), tuple(e["axes"])) for e in entries]


class PatchBank:
    """A pool of patches from degraded instances, refreshed one instance at a time."""

    def __init__(self, scans, config: dict, rng: random.Random) -> None:
        self.scans, self.config, self.rng = scans, config, rng
        self.groups: list[np.ndarray] = [self._fresh_group() for _ in range(config["pool_instances"])]

    def _fresh_group(self) -> np.ndarray:
        c = self.config
        while True:
            instance = degrade_instance(self.rng.choice(self.scans), self.rng, c["factors"], c["noise_probability"])
            patches = cut_patches(instance, c["patches_per_instance"], c["patch_size"], self.rng,
                                  c["shift_probability"], c["max_shift"], c["absent_probability"])
            if patches:
                return np.stack(patches)

    def refresh(self) -> None:
        self.groups[self.rng.randrange(len(self.groups))] = self._fresh_group()

    def batch(self, size: int) -> torch.Tensor:
        picks = [self.groups[self.rng.randrange(len(self.groups))] for _ in range(size)]
        return torch.from_numpy(np.stack([g[self.rng.randrange(len(g))] for g in picks]))


def fixed_validation_set(scans, config: dict, seed: int) -> torch.Tensor:
    rng = random.Random(seed)
    patches = []
    for scan in scans:
        for factor in (2, 4, 6):
            instance = degrade_instance(scan, rng, [factor], 0.0)
            patches += cut_patches(instance, 32, config["patch_size"], rng, 0.0, config["max_shift"], 0.0)
    return torch.from_numpy(np.stack(patches))


def psnr_gain(network: torch.nn.Module, patches: torch.Tensor, device: torch.device) -> dict:
    """PSNR (data range 1, MSE pooled over all validation patches) of cubic and of the network with and
    without its reference; pooled, because per-patch PSNR is infinite on blank background patches."""
    network.eval()
    result = {}
    with torch.inference_mode():
        lr, truth, ref, mask = (patches[:, i:i + 1].to(device) for i in range(4))
        def mean_psnr(x):
            return float(-10 * torch.log10(((x - truth) ** 2).mean()))
        result["cubic"] = mean_psnr(lr)
        result["model_ref"] = mean_psnr(network(lr, ref, mask))
        result["model_noref"] = mean_psnr(network(lr, torch.zeros_like(ref), torch.zeros_like(mask)))
    network.train()
    return result


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
    model = torch.nn.parallel.DistributedDataParallel(network) if distributed else network

    started = time.time()
    bank = PatchBank(load_scans(args.data, specs(config["train"])), config, rng)
    validation = fixed_validation_set(load_scans(args.data, specs(config["val"])), config, 12345)
    print(f"bank ready in {time.time() - started:.0f} s; {len(validation)} validation patches", flush=True)
    loss_fn = CompositeLoss(**config.get("loss", {})).to(device)
    running, running_parts = [], []
    while step < config["steps"]:
        if step % config["refresh_every"] == 0 and step:
            bank.refresh()
        batch = bank.batch(config["batch_size"]).to(device)
        lr, truth, ref, mask = (batch[:, i:i + 1] for i in range(4))
        loss, parts = loss_fn(model(lr, ref, mask), truth)
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
                      "seconds": round(time.time() - started), "val_psnr": psnr_gain(network, validation, device)}
            running, running_parts = [], []
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()

    if rank == 0:
        weights = run_dir / f"{config['name']}.pt"
        torch.save({k: v.cpu() for k, v in network.state_dict().items()}, weights)
        scores = psnr_gain(network, validation, device)
        card = {
            "name": config["name"], "title": config["title"], "description": config["description"],
            "architecture": config["architecture"], "arguments": config["arguments"],
            "weights": weights.name, "sha256": sha256_of(weights),
            "parameters": sum(p.numel() for p in network.parameters()),
            "macs_per_pixel": macs_per_pixel(network),
            "uses_reference": config["uses_reference"], "degradation": config["degradation"],
            "factors": config["factors"],
            "training_data": "; ".join(sorted({e["target"].split("/")[1] for e in config["train"]}))
                             + " (see README acknowledgements for licences)",
            "training": f"{step} steps of {config['batch_size']}×{config['patch_size']}² patches, "
                        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
                        f"config {args.config.name}, seed {config['seed']}",
            "validation": {"patch_psnr_db": scores},
        }
        (run_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(card, indent=2))
        if args.install:
            install(weights, card)
    if distributed:
        dist.destroy_process_group()


def install(weights: Path, card: dict) -> None:
    manifest_path = DEFAULT_MODELS_DIR / "models.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": []}
    manifest["models"] = [m for m in manifest["models"] if m["name"] != card["name"]] + [card]
    shutil.copy(weights, DEFAULT_MODELS_DIR / weights.name)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"installed {card['name']} into {manifest_path}")


if __name__ == "__main__":
    main()
