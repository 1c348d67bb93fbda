"""Side-by-side picture of several models on one val/ case at 4× thick slices (a slice across the thick axis),
with each model's PSNR over the foreground: for ablations whose difference the numbers alone do not show.

    python scripts/picture_models.py --case "openms_p26 T2<-T1" --models progressive-mixed progressive-wgan \\
        --models-dir my-models --output Resources/progressive_wgan_ablation.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import _paths  # noqa: F401
from evaluate import CASES, REPO, Case, across_thick_axis, crop_to
from MRISuperResLib import superresolve
from MRISuperResLib.figures import save_panels
from MRISuperResLib.metrics import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default=CASES[0][0], choices=[c[0] for c in CASES])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--models-dir", help="registry folder holding the models (default: the built-in one)")
    parser.add_argument("--no-reference", action="store_true", help="run the models without their reference")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    case = Case(args.data, next(c for c in CASES if c[0] == args.case))
    low = case.low("thick", args.factor)
    reference = None if args.no_reference else case.references["paired"]
    results = {name: superresolve(low, reference, model=name, target_spacing=case.truth.spacing, threads=args.threads,
                                  models_dir=args.models_dir, self_check=False).array
               for name in ["cubic", *args.models]}
    truth = crop_to(case.truth.array, next(iter(results.values())).shape)
    mask = None if case.mask is None else crop_to(case.mask, truth.shape)
    cut = across_thick_axis(case, truth.shape)
    panels = [(f"{name}  {score(crop_to(array, truth.shape), truth, mask)['psnr']:.2f} dB", cut(crop_to(array, truth.shape)))
              for name, array in results.items()]
    panels.append(("truth", cut(truth)))
    save_panels(panels, args.output, (0.0, float(np.percentile(truth, 99.5))))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
