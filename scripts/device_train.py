"""Train on a lent GPU machine that has PyTorch but neither SimpleITK nor our data.

The device tool sends only the repository (64 MiB at most) to a machine whose Python has torch, numpy, scipy,
yaml and tqdm but not SimpleITK, and where ../shared/data does not exist. So:

    # here: the config's training scans, normalised as training normalises them, 8-bit, deduplicated (~45 MB)
    .venv/bin/python scripts/device_train.py pack scripts/configs/edsr-large.yaml .devicepack/scans.npz
    # there (carry .devicepack): the package's own training loop, fed from the pack
    python3 scripts/device_train.py train scripts/configs/edsr-large.yaml .devicepack/scans.npz \\
        --runs $OUT --set data_workers=14 bf16=true time_limit_minutes=8 [--resume]

Eight bits of a normalised volume quantise at about 55 dB PSNR, far below what the networks resolve (28-40 dB).
The val/ pairs are not packed: score the weights here with scripts/evaluate.py. SimpleITK is replaced by an
empty module when it is missing: training never reads images or resamples through it.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MRISuperRes"))


def _import_without_simpleitk() -> None:
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        stub = types.ModuleType("SimpleITK")

        def constant(name: str) -> int:  # default arguments such as sitk.sitkBSpline are looked up at import
            if name.startswith("sitk"):
                return 0
            raise AttributeError(name)
        stub.__getattr__ = constant
        stub.__file__ = __file__
        sys.modules["SimpleITK"] = stub


def pack(config_path: Path, output: Path, data_root: Path | None) -> None:
    from MRISuperResLib.training import default_data_root
    from MRISuperResLib.training.config import TrainingConfig
    from MRISuperResLib.training.pairs import load_scans

    config = TrainingConfig.from_yaml(config_path)
    scans = load_scans(data_root or default_data_root(config_path), config.pair_specs("train"))
    arrays, index, entries = {}, {}, []

    def store(array: np.ndarray, path: str, mask: str | None) -> int:
        key = (path, mask)  # load_scans normalises a file the same way wherever it appears with the same mask
        if key not in index:
            lo, hi = float(array.min()), float(array.max())
            name = f"v{len(index)}"
            arrays[name] = np.round((array - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
            arrays[f"{name}_range"] = np.array([lo, hi], np.float64)
            index[key] = len(index)
        return index[key]

    for scan in scans:
        t = scan.template
        entries.append({"truth": store(scan.truth, scan.spec.target, scan.spec.mask),
                        "reference": None if scan.reference is None
                        else store(scan.reference, scan.spec.reference, scan.spec.mask),
                        "spec": {"target": scan.spec.target, "reference": scan.spec.reference,
                                 "mask": scan.spec.mask, "axes": list(scan.spec.axes)},
                        "spacing": list(t.spacing), "origin": list(t.origin),
                        "direction": np.asarray(t.direction).tolist()})
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output, entries=np.array(json.dumps(entries)), **arrays)
    print(f"{len(entries)} scans, {len(index)} distinct volumes -> {output} ({output.stat().st_size / 1e6:.1f} MB)")


def unpack(path: Path):
    from MRISuperResLib.training.config import PairSpec
    from MRISuperResLib.training.pairs import Scan
    from MRISuperResLib.volume import Volume

    data = np.load(path)

    cache = {}

    def volume(i):  # each stored volume dequantised once, shared by every scan that names it
        if i is not None and i not in cache:
            lo, hi = data[f"v{i}_range"]
            cache[i] = (data[f"v{i}"].astype(np.float32) * np.float32((hi - lo) / 255) + np.float32(lo))
        return None if i is None else cache[i]

    scans = []
    for entry in json.loads(str(data["entries"])):
        truth, reference = volume(entry["truth"]), volume(entry["reference"])
        spec = PairSpec(entry["spec"]["target"], entry["spec"]["reference"], entry["spec"]["mask"],
                        tuple(entry["spec"]["axes"]))
        template = Volume(truth, tuple(entry["spacing"]), tuple(entry["origin"]), np.array(entry["direction"]))
        scans.append(Scan(truth, reference, spec, template))
    return scans


def train(config_path: Path, pack_path: Path, runs: Path, overrides: list[str], resume: bool, device: str) -> None:
    import yaml

    from MRISuperResLib.training import loop
    from MRISuperResLib.training.config import TrainingConfig

    config = TrainingConfig.from_yaml(config_path)
    for item in overrides:
        key, _, text = item.partition("=")
        if not hasattr(config, key):
            raise SystemExit(f"unknown setting '{key}'")
        setattr(config, key, yaml.safe_load(text))
    config.val = []
    loop.train(config, Path("."), runs, device=device, resume=resume, config_name=config_path.name,
               train_scans=unpack(pack_path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack")
    p.add_argument("config", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--data", type=Path)
    t = commands.add_parser("train")
    t.add_argument("config", type=Path)
    t.add_argument("pack", type=Path)
    t.add_argument("--runs", type=Path, required=True)
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default="cuda")
    args = parser.parse_args()
    _import_without_simpleitk()
    if args.command == "pack":
        pack(args.config, args.output, args.data)
    else:
        train(args.config, args.pack, args.runs, args.set, args.resume, args.device)


if __name__ == "__main__":
    main()
