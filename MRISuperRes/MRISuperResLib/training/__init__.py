"""Training inside the package: pairs from real scans (`pairs`), losses, the loop, YAML configs (`config`).

`mrisuperres train CONFIG` and `python -m MRISuperResLib.training CONFIG` (the form `torchrun` needs) both
call `train_from_arguments`. Needs pyyaml (the `train` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def default_data_root(config_path: Path) -> Path:
    """../shared/data beside the checkout when it exists (the project's own configs), else the config's folder."""
    shared = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return shared if shared.is_dir() else Path(config_path).resolve().parent


def train_from_arguments(args: argparse.Namespace) -> Path:
    from .config import TrainingConfig
    from .loop import train

    config = TrainingConfig.from_yaml(Path(args.config))
    if args.steps:
        config.steps = args.steps
    data = Path(args.data) if args.data else default_data_root(Path(args.config))
    return train(config, data, Path(args.runs), threads=args.threads, device=args.device, resume=args.resume,
                 install=args.install, models_dir=args.models_dir, config_name=Path(args.config).name)
