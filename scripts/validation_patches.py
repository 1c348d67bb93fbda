#!/usr/bin/env python3
"""Score weights files on a training config's fixed validation patches, as the training loop logs them
(`val_psnr`: pooled patch PSNR of cubic and of the network with and without its reference; thick slices, and
in-plane when the config trains on it). Compares a run's checkpoint with the weights it started from on the
same patches, e.g. for `edsr-large-anneal`:

    .venv/bin/python scripts/validation_patches.py scripts/configs/edsr-large-anneal.yaml \\
        MRISuperRes/Resources/Models/edsr-large.pt runs/edsr-large-anneal/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import _paths  # noqa: F401
from MRISuperResLib.models.architectures import build_architecture
from MRISuperResLib.training import loop
from MRISuperResLib.training.config import TrainingConfig

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("weights", type=Path, nargs="+", help="weights (*.pt) or a run's checkpoint.pt")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainingConfig.from_yaml(args.config)
    scans = loop.load_scans(args.data, config.pair_specs("val"))
    thick, inplane = loop.validation_sets(scans, config)
    device = torch.device("cpu")
    for path in args.weights:
        network = build_architecture(config.architecture, config.arguments).to(memory_format=torch.channels_last)
        state = torch.load(path, map_location="cpu", weights_only=False)
        network.load_state_dict(state["network"] if "network" in state else state)
        row = {"weights": str(path), "val_psnr": loop.psnr_gain(network, thick, device)}
        if inplane:
            row["val_psnr_inplane"] = loop.psnr_gain(network, inplane, device)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
