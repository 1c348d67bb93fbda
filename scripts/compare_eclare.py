"""Side by side with ECLARE (Remedios et al.; pip `eclare`, GPL-3.0): same val/ cases, same 4× thick slices.

ECLARE trains a network from scratch on each scan's own planes (hours on a GPU at its default of 10⁶
patches); here it runs at reduced training (`--n-patches`) on the CPU, given the true slice profile (box,
4 slices thick: "boxcar", relative thickness 4) so that its own profile estimation (ESPRESO) is skipped, as
our models are told the factor. It lives in its own virtual environment (it pins an old scipy), which this
script calls as a program:

    python3.11 -m venv ../eclare-venv && ../eclare-venv/bin/pip install torch==2.13.0 eclare==1.0.1
    python scripts/compare_eclare.py --eclare ../eclare-venv/bin/run-eclare --threads 2 --output Resources

ECLARE's output (its own grid) is resampled onto the truth's grid and scored like every row of
`scripts/evaluate.py` (PSNR/SSIM over the same foreground); our rows come from evaluate.py's cache when
they are there (same weights), else they are run here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401
from evaluate import CASES, REPO, Case, cache_key, crop_to, row_key
from MRISuperResLib import read_volume, write_volume
from MRISuperResLib.metrics import score
from MRISuperResLib.models.registry import ModelRegistry
from MRISuperResLib.resample import resample_to_grid

DEFAULT_CASES = ("openms_p26 T2<-T1", "spine_sub05 MTon<-MToff")
# The default model, alone and as users run it (self-check and adaptation), without and with the reference.
OURS = (("cubic", "none"), ("edsr-large", "none"), ("edsr-large+adapt", "none"), ("edsr-large+adapt", "paired"))


def run_eclare(program: str, low_path: Path, work: Path, n_patches: int, threads: int) -> tuple[Path, float]:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run([program, "--in-fpath", str(low_path), "--out-dir", str(work), "--gpu-id", "-1",
                           "--n-patches", str(n_patches), "--relative-slice-thickness", "4",
                           "--relative-slice-profile-type", "boxcar"],
                          capture_output=True, text=True, env=environment)
    if done.returncode:
        raise SystemExit(f"ECLARE failed on {low_path.name}:\n{done.stderr[-2000:]}")
    output = next(work.glob("*_eclare.nii*"))
    return output, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eclare", required=True, help="the run-eclare program of ECLARE's virtual environment")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--n-patches", type=int, default=64000, help="ECLARE's training patches (default 10⁶)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "Resources"))
    parser.add_argument("--cache", default=str(REPO / "Resources" / "evaluation_rows.jsonl"),
                        help="evaluate.py's row cache, read for our models' rows")
    args = parser.parse_args()

    output = Path(args.output)
    cache = Path(args.cache)
    cached = {row_key(r): r for r in map(json.loads, cache.read_text().splitlines())} if cache.exists() else {}
    registry = ModelRegistry()
    rows = []
    for case_spec in [c for c in CASES if c[0] in args.cases]:
        case = Case(Path(args.data), case_spec)
        low = case.low("thick", 4)
        for model, reference in OURS:
            name = model.partition("+")[0]
            sha = None if name == "cubic" else registry.get(name).sha256
            row = cached.get(cache_key(case.name, "thick", 4, model, reference, sha))
            if row is None:
                _, row = case.run("thick", 4, model, reference, args.threads)
            rows.append(row)
            print(json.dumps(row), flush=True)
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            write_volume(low, work / "low.nii.gz")
            produced, seconds = run_eclare(args.eclare, work / "low.nii.gz", work / "out", args.n_patches, args.threads)
            resampled, _ = resample_to_grid(read_volume(produced), case.truth.grid)
            result = resampled.array
        truth = crop_to(case.truth.array, result.shape)
        mask = None if case.mask is None else crop_to(case.mask, result.shape)
        row = {"case": case.name, "degradation": "thick", "factor": 4, "model": f"ECLARE ({args.n_patches} patches)",
               "reference": "none", "seconds": round(seconds, 1), **score(crop_to(result, truth.shape), truth, mask)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    # Cases not run this time keep their rows from an earlier run (ECLARE takes long on a CPU: one case a run).
    previous = output / "eclare_comparison.json"
    if previous.exists():
        rerun = {row["case"] for row in rows}
        rows = [row for row in json.loads(previous.read_text()) if row["case"] not in rerun] + rows
    previous.write_text(json.dumps(rows, indent=1) + "\n")
    # Our rows' seconds are those of their own runs (evaluate.py's cache, usually 2 threads); ECLARE's are this run's.
    lines = ["| case | method | reference | PSNR (dB) | SSIM | seconds (ECLARE: CPU threads as run, shared) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['case']} | {row['model']} | {row['reference']} | {row['psnr']:.2f} | {row['ssim']:.4f} "
                     f"| {row['seconds']:.0f} |")
    (output / "eclare_comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
