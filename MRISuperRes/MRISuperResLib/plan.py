"""The plan of a run, made before anything heavy happens and printable: grids, planes, memory, time.

A plane is named by the two voxel axes it spans: "ij" (slices along k), "ik" (along j), "jk" (along i).
The default runs every plane that contains an upsampled axis, so each upsampled axis is seen in-plane by
the 2D model in two orientations (one when two axes are upsampled in the same plane).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .devices import cpu_vector_extension, installed_torch, uses_bfloat16
from .errors import MRISuperResError
from .geometry import SPACING_TOLERANCE, resampled_grid, scale_factors, upsampled_axes
from .models.registry import REFERENCE_MODES, ModelCard
from .volume import AXIS_NAMES, Grid

PLANES = ("ij", "ik", "jk")
# Float32 volumes on the target grid alive at the peak: pre-interpolated input, reference, reference
# mask, the current plane's prediction, the fused sum, and the de-normalised result.
TARGET_GRID_COPIES = 6
# Multiply-adds per second per CPU thread reached by the thin full-resolution slice networks, and on a CUDA
# device. Calibrated on scripts/benchmark.py (Resources/benchmark_crop.json: vdsr-mixed unregistered took
# 21.5 s, of which about 18 s network, where 6e9 planned 29 s; since the networks run only inside the signal's
# boxes, their many small tiles of thin layers go faster per multiply-add than the full slices measured before),
# then 9.5e9 * 1.27 since their replicate padding no longer copies every feature map (vdsr-mixed's forward pass
# 0.59 -> 0.44 s; Resources/benchmark_registration_speed.json).
CPU_MACS_PER_SECOND_PER_THREAD = 12e9
# The wide half-resolution EDSR runs its convolutions far more efficiently (channels_last, 64 channels):
# 8 tiles of 256² in 0.88 s at 123 k MAC/px on 2 threads, about 29e9 per thread; benchmark runs of
# edsr-mixed took 66-74 s on the benchmark volume (2 threads), for which 30e9 plans 73 s.
# The progressive network and DAASR (channel attention, layer norms and windowed matching: memory-bound),
# calibrated on scripts/benchmark.py (2 threads, idle machine: 46.8 s and 165.9 s without adaptation).
# The transformer families: TransMRSR's window partitions, rolls and masks are memory-bound; the CNN + ViT
# network is mostly convolutions at half resolution. First guesses (5e9, 20e9) planned them 52 % and 46 % over
# the measurement (Resources/benchmark_default.json), where edsr-large was planned 21 % over in the same run;
# scaled by the ratio of the two.
CPU_MACS_PER_SECOND_PER_THREAD_BY_ARCHITECTURE = {"edsr": 30e9, "progressive": 39e9, "daasr": 8.2e9,
                                                  "transmrsr": 6.3e9, "cnn-vit": 24e9}
CUDA_MACS_PER_SECOND = 2e12
# How many times faster bfloat16 autocast runs than float32 on a CPU that computes it natively
# (`devices.uses_bfloat16`): one thread of a 2-core AMD EPYC with AVX-512 BF16, each registered network's
# forward pass on two 128² tiles and a fine-tuning step of 8 × 64² patches, rounded down; EDSR's on four 192²
# tiles, nearer inference's 256² (2.2; 1.96 on 128²). DAASR's matching and TransMRSR's windows are memory-bound,
# so they gain least. scripts/benchmark.py then took the default as a user runs it 73.8 s against 141.0 s.
BFLOAT16_SPEEDUP = {"edsr": 2.2, "srcnn": 2.0, "cnn-vit": 1.8, "rfdn": 1.7, "progressive": 1.7, "vdsr": 1.4,
                    "rcan": 1.4, "daasr": 1.2, "transmrsr": 1.1}
BFLOAT16_TRAINING_SPEEDUP = {"edsr": 1.8, "srcnn": 2.0, "cnn-vit": 1.5, "rfdn": 1.3, "progressive": 1.4,
                             "vdsr": 1.3, "rcan": 1.3, "daasr": 1.1, "transmrsr": 1.1}
# Apple's MPS: not measured (no Mac has been at hand); a first guess of about a tenth of a data-centre GPU,
# to be calibrated with scripts/benchmark.py --device mps. The plan multiplies every GPU rate by it and divides every GPU time by it.
MPS_SHARE_OF_CUDA = 0.1
CUBIC_SECONDS_PER_VOXEL = 1e-8
# Float32 values alive at once per tile pixel inside a slice network (feature maps and the convolutions'
# unfolded inputs), and the resident size of Python with torch loaded; both measured with
# scripts/benchmark.py (peak RSS), for which the estimate comes within 5 %.
ACTIVATION_CHANNELS = 320
NETWORK_RUNTIME_BYTES = 400 * 2 ** 20
# Tiles per network call on a CPU in float32 (a slice group's `plan.batch_size` tiles go through in calls of
# this many): edsr-large's activations for 8 tiles of 256² (33 MB each) outgrow the CPU's cache, and 2 at a
# time took the benchmark's network pass from 120-124 s to 93-99 s on a 2-core AMD EPYC without AVX-512, the
# output unchanged (README, Speed). Not measured under bfloat16 or on a GPU: they take the whole group at once.
CPU_TILES_PER_CALL = 2
DEFAULT_TILE = 256
DEFAULT_BATCH_SIZE = 8  # slices (tiles) per network call
# An input whose finest spacing is more than this many times finer or coarser than every training volume's
# gets a warning line (the training data spans 0.5-1 mm: knees at 0.3 mm pass, 0.2 mm or 3 mm do not).
SPACING_WARNING_RATIO = 2.0
# A plane whose sharp (not upsampled) axis is this many times coarser than the finest sharp axis is left out
# by default (`leave_out_coarse_planes`): measured equal at 3x, worse by 0.2-0.3 dB at 5.6x.
COARSE_PLANE_RATIO = 2.9
# Seconds of per-scan fine-tuning in every run that can make pairs from the scan (`--adapt SECONDS` changes
# it, `--no-adapt` turns it off), converted into a counted number of steps (`adaptation_steps` below).
DEFAULT_ADAPT_SECONDS = 50.0
# Fine-tuning cost (forward + backward + Adam), per CPU thread, by architecture, in forward multiply-adds per
# second: the wide half-resolution EDSR (16 × 64² patches × 123 k MAC/px per 0.28 s step on 2 threads) runs
# convolutions far more efficiently than the thin full-resolution families; DAASR's, TransMRSR's and CNN-ViT's
# figures are from single training steps measured next to EDSR's on that machine (DAASR's matching and channel
# attention are memory-bound). The thin families' (VDSR, SRCNN, RFDN, RCAN: 2.3-3.9e9, 3.0e9 taken) and the
# progressive network's were measured later, on a CPU with AVX2 only (`scripts/benchmark.py
# --adaptation-steps`): 1.7-2.5x the figures they had (1.5e9 and 8e9, from before the thin networks'
# convolutions stopped copying their padded input), so on a CPU with AVX-512 they are at worst low, which
# plans fewer steps, not a longer run. And a CUDA device.
TRAINING_MACS_PER_SECOND_PER_THREAD = {"edsr": 14e9, "progressive": 20e9, "daasr": 5e9, "transmrsr": 3e9, "cnn-vit": 10e9}
THIN_NETWORK_TRAINING_MACS_PER_SECOND_PER_THREAD = 3.0e9
CUDA_TRAINING_MACS_PER_SECOND = 1e12
# Without a reference, EDSR fine-tunes only its later half (`adapt.adapted_parameters`): the backward pass stops
# halfway, 1.8x the steps per second (edsr-large: 0.49 against 0.87-0.91 s per step, one thread).
LATER_HALF_SPEEDUP = {"edsr": 1.8}
# EDSR's, DAASR's and CNN-ViT's training rates above were measured on a CPU with AVX-512. In float32 on one whose
# widest vectors are AVX2 (`devices.cpu_vector_extension`) their fine-tuning steps cost more: edsr-large
# 0.43-0.49 s for the whole network against the 0.28 s counted, 0.27-0.34 s for its later half against 0.16
# (2 threads, a 2-core AMD EPYC: scripts/adaptation_ablation.py's timings, a profiled benchmark-volume run and
# `scripts/benchmark.py --adaptation-steps`), so 50 s of adaptation took 75-100 s there; daasr-mixed 0.30 s
# against 0.27, cnn-vit 0.11 against 0.09. Their forward passes run at the counted rates (EDSR at 66 GMAC/s
# on 64-channel convolutions), so only training is scaled, by architecture. Architectures not named here,
# and unmeasured vector extensions, keep the rates above.
CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION = {"AVX2": {"edsr": 0.58, "daasr": 0.88, "cnn-vit": 0.83}}
# A ceiling, so that a fast device spends seconds, not the whole budget: the gain flattens well before it.
MAX_ADAPT_STEPS = 600
# What a step costs beyond its multiply-adds (Python, the optimiser, batching): it dominates tiny networks.
STEP_OVERHEAD_SECONDS = 0.01
ADAPT_PATCH = 64
ADAPT_BATCH = 8
# Patches drawn from the scan's own planes (`adapt.scan_pairs`), and how many of them a run with a reference
# uses; those on every `HOLDOUT_EVERY`-th slice are held out and scored.
ADAPT_PAIRS = 2048
ADAPT_PAIRS_WITH_REFERENCE = 256
HOLDOUT_EVERY = 5
# The self-check besides scoring: making the scan's own pairs (a few coarsened copies of the input, 0.6 s for
# 2048 projected pairs on the benchmark volume, 2 threads) and the reference on the scan's own grid. It was
# 4 s while it also held the scoring of about fifty patches (2-4 s measured then); the scoring is now counted
# by itself, and the benchmark found every plan 27-32 % high with 4.
SELF_CHECK_SECONDS = 2.0
# Before the self-check the model runs on a block at the scan's centre, this many voxels along each axis it
# does not upsample (plus a few for the 2.5D neighbours), to estimate the slice profile (`pipeline`).
PROFILE_BLOCK = 48
TILE_OVERLAP = 16
# Registering a paired reference (the default; ITK, on the CPU whatever the device), resampling it a second
# time and scoring the edge agreement of both placements, per input voxel and thread: calibrated on
# scripts/benchmark.py with and without --no-register-reference (13-17 s on the 4.2 M-voxel input, 2 threads, in
# Resources/benchmark_crop.json; 0.4-7 s in Resources/benchmark_registration_speed.json, since the metric takes
# gradients at its sample points only and a registration that barely moves the reference skips the second
# resampling and scoring: 5 s planned).
REGISTRATION_SECONDS_PER_INPUT_VOXEL_THREAD = 2.4e-6
# `round_lesions` (numpy and scipy, one thread): 3.3 s on the benchmark's 256 x 256 x 64 slabs, 1.7 s on a
# 240 x 240 x 38-slab brain, on the 2-core AMD EPYC.
ROUND_LESION_SECONDS_PER_INPUT_VOXEL = 8e-7
# Texture transfer, per slice pixel of every planned plane and CPU thread, by reference mode: paired mode
# scatters three images per slice (input, sharp and blurred reference) and matches in a window; the bank
# modes scatter one and match against the bank. Calibrated on scripts/benchmark.py (edsr-tt against
# edsr-mixed, the same run, 2 threads; see README) so that the plan comes within 30 % of the measurement. The
# CUDA figures likewise, on an H100 (Resources/benchmark_gpu.json: edsr-tt paired 18.6 s and self 10.1 s
# against edsr-mixed's 7.8 s); unpaired was not measured there and takes self's figure (the same bank
# matching). And the working memory of scattering and bank matching (MatchSettings.memory_bytes plus the FFT
# planes).
TEXTURE_CPU_SECONDS_PER_PIXEL_THREAD = {"paired": 6.1e-6, "unpaired": 4.1e-6, "self": 4.3e-6}
TEXTURE_CUDA_SECONDS_PER_PIXEL = {"paired": 3.2e-7, "unpaired": 7e-8, "self": 7e-8}
TEXTURE_WORKING_BYTES = 320 * 2 ** 20
# One slice in this many of a plane is matched at inference (texture.MatchSettings.slice_stride).
TEXTURE_SLICE_STRIDE = 4
# Per slice pixel in flight: the network's 16 projected channels placed on the pixels (per slice group and
# per batch of tiles), the 82 matched channels living on the ¼-resolution grid (82 / 16 per pixel), rounded up.
TEXTURE_CHANNELS_IN_FLIGHT = 22


@dataclass(frozen=True)
class Plan:
    source: Grid
    target: Grid
    factors: tuple[float, float, float]
    upsampled: tuple[int, ...]
    planes: tuple[str, ...]
    model: ModelCard
    uses_reference: bool
    reference_mode: str | None
    device: str
    threads: int
    batch_size: int
    tile: int
    memory_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    check_seconds: float = 0.0  # of `seconds`: the self-check and per-scan adaptation
    adapt_steps: int = 0        # per-scan fine-tuning steps after the self-check (counted: deterministic)
    # The notes a run shows even when quiet: the input is outside what the model was trained for.
    warnings: list[str] = field(default_factory=list)
    adapt_steps_without_reference: int = 0  # the same seconds when the self-check drops the reference
    # `seconds` when the run adapts the model only if it loses to cubic on the scan (an input coarse along two
    # axes) and it does: the fine-tuning `seconds` leaves out. 0 when no such adaptation can happen.
    seconds_if_adapted: float = 0.0

    def time_phrase(self) -> str:
        """'about 17 s' or, when a run may adapt the model halfway, 'about 17 s (up to 1 min 13 s)'."""
        return f"about {format_seconds(self.seconds)}" + (
            f" (up to {format_seconds(self.seconds_if_adapted)})" if self.seconds_if_adapted else "")

    def summary(self) -> str:
        factors = " × ".join(f"{f:.3g}" for f in self.factors)
        lines = [
            f"input   {self.source.describe()}",
            f"output  {self.target.describe()}  (scale {factors})",
            f"upsampled axes: {', '.join(AXIS_NAMES[a] for a in self.upsampled)}",
            f"model   {self.model.name}" + (" with reference" if self.uses_reference else "")
            + (f", texture transfer ({self.reference_mode} reference)" if self.reference_mode else ""),
            f"planes  {', '.join(plane_label(self.source, p) for p in self.planes) or 'none (interpolation only)'}",
            f"device  {self.device}, {self.threads} CPU threads, batch {self.batch_size}, tiles ≤ {self.tile} px",
            f"memory  about {format_bytes(self.memory_bytes)} at peak",
            f"time    about {format_seconds(self.seconds)}"
            + (f" (of which {format_seconds(self.check_seconds)} self-check and adaptation)"
               if self.check_seconds else "")
            + (f"; up to {format_seconds(self.seconds_if_adapted)} if the model is adapted to this scan"
               if self.seconds_if_adapted else ""),
        ]
        return "\n".join(lines + [f"note    {n}" for n in self.notes] + [f"warning {w}" for w in self.warnings])

    def one_line(self) -> str:
        """'0.9 × 0.9 × 4 mm, 256 × 256 × 40 → 0.9 mm isotropic, 256 × 256 × 178, about 1.2 GB, about 40 s on CPU'."""
        def spacing(values) -> str:
            if max(values) - min(values) < 1e-6:
                return f"{values[0]:.3g} mm isotropic"
            return " × ".join(f"{v:.3g}" for v in values) + " mm"
        size = lambda grid: " × ".join(str(n) for n in grid.size)  # noqa: E731
        device = "Apple GPU" if self.device == "mps" else "GPU" if on_gpu(self.device) else "CPU"
        return (f"{spacing(self.source.spacing)}, {size(self.source)} → {spacing(self.target.spacing)}, "
                f"{size(self.target)}, about {format_bytes(self.memory_bytes)}, "
                f"{self.time_phrase()} on {device}")

    def to_json(self) -> dict:
        def grid_json(grid: Grid) -> dict:
            return {"size": list(grid.size), "spacing": list(grid.spacing), "origin": list(grid.origin),
                    "direction": grid.direction.ravel().tolist()}
        return {"input": grid_json(self.source), "output": grid_json(self.target), "factors": list(self.factors),
                "upsampled_axes": [AXIS_NAMES[a] for a in self.upsampled], "planes": list(self.planes),
                "model": self.model.name, "uses_reference": self.uses_reference,
                "reference_mode": self.reference_mode, "device": self.device,
                "threads": self.threads, "batch_size": self.batch_size, "tile": self.tile,
                "memory_bytes": self.memory_bytes, "seconds": round(self.seconds, 1),
                "check_seconds": round(self.check_seconds, 1),
                "seconds_if_adapted": round(self.seconds_if_adapted, 1), "notes": self.notes, "warnings": self.warnings}


def profile_block_margin(context: int) -> int:
    """Slices the profile block (`PROFILE_BLOCK`) gains on each side of each axis it is cut along: a 2.5D
    network's neighbours and two more, so that the inner block's slices see real neighbours."""
    return context + 2


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def plane_label(grid: Grid, plane: str) -> str:
    """'ik (coronal)': the plane by voxel axes and by the anatomical plane its normal is closest to."""
    normal_axis = "ijk".index(next(a for a in "ijk" if a not in plane))
    normal = grid.direction[:, normal_axis]
    anatomical = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
    return f"{plane} ({anatomical})"


def target_spacing_for(source: Grid, target_spacing=None, scale=None) -> tuple[float, float, float]:
    """The requested spacing: explicit, or input spacing / scale, or isotropic at the finest input spacing."""
    if target_spacing is not None and scale is not None:
        raise MRISuperResError("Give either a target spacing or a scale, not both.")
    if target_spacing is not None:
        spacing = _three_positive(target_spacing, "target spacing")
    elif scale is not None:
        spacing = tuple(s / f for s, f in zip(source.spacing, _three_positive(scale, "scale")))
    else:
        spacing = (min(source.spacing),) * 3
    return spacing


def _three_positive(values, what: str) -> tuple[float, float, float]:
    values = [values] * 3 if np.isscalar(values) else list(values)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise MRISuperResError(f"The {what} must be one or three positive numbers (i j k), not {values}.")
    return tuple(float(v) for v in values)


def choose_planes(upsampled: tuple[int, ...], requested: list[str] | None) -> tuple[str, ...]:
    if requested:
        unknown = [p for p in requested if p not in PLANES]
        if unknown:
            raise MRISuperResError(f"Unknown plane {unknown[0]!r}; planes are named by voxel axes: {', '.join(PLANES)}.")
        useless = [p for p in requested if not any(AXIS_NAMES[a] in p for a in upsampled)]
        if useless:
            raise MRISuperResError(
                f"Plane {useless[0]} holds no upsampled axis; choose among "
                f"{', '.join(p for p in PLANES if any(AXIS_NAMES[a] in p for a in upsampled))}.")
        return tuple(dict.fromkeys(requested))
    return tuple(p for p in PLANES if any(AXIS_NAMES[a] in p for a in upsampled))


def leave_out_coarse_planes(planes: tuple[str, ...], upsampled: tuple[int, ...], spacing) -> tuple[tuple[str, ...], list[str]]:
    """The planes without those whose sharp axis is `COARSE_PLANE_RATIO` times or more coarser than the finest
    sharp axis (a 0.9 × 0.9 × 5 mm spine's 5 mm axis, when one 0.9 mm axis is thick), and a note for each.
    Such a plane's slices carry little along that axis, and averaging them in loses detail: on the spine val/
    case (edsr-large, 4× thick) the 0.9 mm plane alone scored +0.31 dB over both without a reference and +0.17
    with one; on a brain made 3× coarse along one axis the two were equal, at 2× both planes won by 0.12 dB."""
    sharp = {a: spacing[a] for a in range(3) if a not in upsampled}
    if len(sharp) < 2:
        return planes, []
    finest = min(sharp.values())
    kept, notes = [], []
    for plane in planes:
        axes = [AXIS_NAMES.index(name) for name in plane]
        coarse = [a for a in axes if a in sharp and sharp[a] >= COARSE_PLANE_RATIO * finest]
        if coarse:
            notes.append(f"plane {plane} left out: its sharp axis {AXIS_NAMES[coarse[0]]} ({sharp[coarse[0]]:.3g} mm) is "
                         f"{sharp[coarse[0]] / finest:.1f}× coarser than the finest ({finest:.3g} mm); --planes uses it anyway")
        else:
            kept.append(plane)
    return (tuple(kept), notes) if kept else (planes, [])


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def make_plan(source: Grid, model: ModelCard, target_spacing=None, scale=None, planes: list[str] | None = None,
              has_reference: bool = False, device: str = "cpu", threads: int | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, tile: int = DEFAULT_TILE, reference_mode: str | None = None,
              self_check: bool = True, adapt_seconds: float = DEFAULT_ADAPT_SECONDS,
              register_reference: bool = True, signal_shares: dict[int, float] | None = None) -> Plan:
    """Decide the target grid, planes and costs of a run; refuse a target with nothing to upsample.

    `signal_shares` (numpy axis normal to a plane's slices -> share of their pixels in the boxes that hold
    signal, `foreground.signal_shares`) scales the network's time: it does not run over the air.

    `reference_mode` (texture-transfer models only) is paired, unpaired or self; an unpaired reference
    feeds only the texture, not the reference branch. The time includes the self-check and up to
    `adapt_seconds` of adaptation (as counted steps: less when the step ceiling comes first)."""
    spacing = target_spacing_for(source, target_spacing, scale)
    target = resampled_grid(source, spacing)
    factors = scale_factors(source, target)
    upsampled = upsampled_axes(source, target)
    if not upsampled:
        raise MRISuperResError(
            f"The target spacing {' × '.join(f'{s:.3g}' for s in spacing)} mm is not finer than the input's "
            f"{' × '.join(f'{s:.3g}' for s in source.spacing)} mm on any axis; ask for a finer spacing or a scale above 1.")
    notes, warnings = [], []
    # Checked for interpolation too, which runs no plane: a bad request is a mistake whatever the model.
    chosen = choose_planes(upsampled, planes)
    chosen = () if model.is_interpolation else chosen
    if chosen and not planes and model.arguments.get("context", 0):
        # Measured on the 2.5D networks only: the thin 2D ones (no context) gain more from averaging both
        # planes (spine val/, 4x thick, without a reference: edsr-large +0.31, edsr-mixed +0.04, daasr-refhead
        # +0.02, transmrsr +0.05 dB with the plane left out; srcnn-ref -0.06, rcan-ref -0.10, rfdn-ref -0.09).
        chosen, left_out = leave_out_coarse_planes(chosen, upsampled, source.spacing)
        notes.extend(left_out)
    if any(f < 1 - SPACING_TOLERANCE for f in factors):
        notes.append("some axes get coarser; they are low-pass filtered before resampling")
    one_scale = scale is not None and (np.isscalar(scale) or len(scale) == 1)
    if one_scale and max(source.spacing) >= 1.5 * min(source.spacing) and len(upsampled) == 3:
        # Thick slices and `--scale 4` most often mean 4x along the slices; every axis gets it.
        thick = int(np.argmax(source.spacing))
        example = " ".join(f"{factors[a]:g}" if a == thick else "1" for a in range(3))
        warnings.append(f"one --scale value scales every axis, the sharp ones too "
                        f"({' × '.join(f'{s:.3g}' for s in spacing)} mm); for the thick axis alone give three "
                        f"values (--scale {example}) or --target-spacing")
    if has_reference and not model.uses_reference:
        notes.append(f"model {model.name} does not use a reference; the reference is only checked, not used")
    # Two or more coarse axes are an in-plane run: judged against the in-plane factors when the model has them.
    inplane = len(upsampled) > 1 and bool(model.inplane_factors)
    trained = tuple(model.inplane_factors) if inplane else model.trained_factors
    if trained:
        top = max(factors)
        if top > max(trained) + 0.5 or top < min(trained) - 0.5:
            kind = "in-plane factors" if inplane else "factors"
            advice = "expect less gain, and check the result"
            # Thick slices beyond the trained factors are where learning from the scan pays most (val/, 8x:
            # +1.60 / +0.70 dB with / without a reference over the same run not adapted; README, Validation).
            if len(upsampled) == 1 and not model.texture_transfer:
                adapts = self_check and bool(adapt_seconds and adapt_seconds > 0)
                advice = ("expect less gain from the network itself; this run adapts it to the scan, which makes up "
                          "much of that" if adapts else
                          f"{advice}; adapting the model to the scan (on by default, off in this run) makes up much "
                          "of the loss")
            warnings.append(f"scale {top:.3g} is outside the {kind} {model.name} was trained for "
                            f"({', '.join(f'{f:g}' for f in trained)}): {advice}")
    if model.spacings and not model.is_interpolation:
        finest = min(source.spacing[a] for a in range(3) if a not in upsampled) if len(upsampled) < 3 \
            else min(source.spacing)
        low, high = min(model.spacings), max(model.spacings)
        if finest < low / SPACING_WARNING_RATIO or finest > high * SPACING_WARNING_RATIO:
            warnings.append(f"the input's finest spacing, {finest:.3g} mm, is far from the {low:g}-{high:g} mm of the "
                            f"volumes {model.name} was trained on (it sees the anatomy at another scale in voxels): "
                            "expect less gain, and check the result")
    if len(upsampled) > 1 and not model.is_interpolation and not model.inplane_factors:
        warnings.append(f"the input is coarse along {len(upsampled)} axes but {model.name} was trained for thick slices "
                     "(one coarse axis) only; a model with in-plane factors (see `mrisuperres models`) fits it better")
    threads = threads or installed_torch().cpu_threads
    voxels = target.voxel_count
    tile_pixels = min(tile, max(target.size)) ** 2
    activations = 0 if model.is_interpolation else (tiles_per_call(device, batch_size) * tile_pixels
                                                    * ACTIVATION_CHANNELS * 4 + NETWORK_RUNTIME_BYTES)
    memory = TARGET_GRID_COPIES * 4 * voxels + source.voxel_count * 8 + activations
    if model.is_interpolation:
        seconds = voxels * CUBIC_SECONDS_PER_VOXEL
    else:
        per_thread = CPU_MACS_PER_SECOND_PER_THREAD_BY_ARCHITECTURE.get(model.architecture, CPU_MACS_PER_SECOND_PER_THREAD)
        rate = CUDA_MACS_PER_SECOND * gpu_share(device) if on_gpu(device) else per_thread * threads
        if uses_bfloat16(device):
            rate *= BFLOAT16_SPEEDUP.get(model.architecture, 1.0)
        shares = [(signal_shares or {}).get(2 - AXIS_NAMES.index(normal_axis_name(p)), 1.0) for p in chosen]
        network_seconds = voxels * sum(shares) * model.macs_per_pixel / rate
        seconds = voxels * CUBIC_SECONDS_PER_VOXEL + network_seconds
        if len(upsampled) == 1:  # thick slabs: their small round lesions are searched for after the projection
            seconds += source.voxel_count * ROUND_LESION_SECONDS_PER_INPUT_VOXEL
    if reference_mode:
        # The texture inputs of one slice group and of one batch of tiles, and the confidence volume.
        slice_pixels = max(target.size[a] * target.size[b] for a in range(3) for b in range(a + 1, 3))
        memory += (TEXTURE_CHANNELS_IN_FLIGHT * 4 * batch_size * (slice_pixels + tile_pixels)
                   + 4 * voxels + TEXTURE_WORKING_BYTES)
        seconds += voxels * len(chosen) * (TEXTURE_CUDA_SECONDS_PER_PIXEL[reference_mode] / gpu_share(device)
                                           if on_gpu(device) else TEXTURE_CPU_SECONDS_PER_PIXEL_THREAD[reference_mode] / threads
                                           ) / TEXTURE_SLICE_STRIDE
    uses_reference = has_reference and model.uses_reference and reference_mode in (None, "paired")
    check_seconds, steps, steps_alone, conditional_seconds = 0.0, 0, 0, 0.0
    if self_check and not model.is_interpolation:
        # Texture-transfer models are checked but not adapted: fine-tuning would need texture matched for
        # every training patch, and their texture branch adds little over the backbone (README, texture).
        if adapt_seconds and adapt_seconds > 0 and model.texture_transfer:
            notes.append(f"model {model.name} does texture transfer: it is checked on this scan, not adapted to it")
        elif adapt_seconds and adapt_seconds > 0:
            steps, steps_alone = (adaptation_steps(adapt_seconds, model.architecture, model.macs_per_pixel, device,
                                                   threads, with_reference, model.adapt_step_ceiling(with_reference))
                                  for with_reference in (uses_reference, False))
        # An input coarse along two axes is most often coarse in-plane (k-space truncated): the run checks the
        # model on it and fine-tunes only if the model loses to cubic there (`pipeline._check_and_adapt`), so
        # the time counts no fine-tuning (it counted 50 s that such runs did not spend).
        timed_steps = 0 if len(upsampled) > 1 else steps
        if steps and not timed_steps:
            notes.append("the input is coarse along two axes: if it was acquired coarse in-plane, the model is checked "
                         "on this scan and adapted to it only if it does worse than interpolation there")
        # The held-out patches are scored once, with a reference also without it, and again when adapted.
        held_out = (ADAPT_PAIRS_WITH_REFERENCE if uses_reference else ADAPT_PAIRS) / HOLDOUT_EVERY
        scorings = 1 + int(uses_reference) + int(timed_steps > 0)
        scoring_seconds = held_out * ADAPT_PATCH ** 2 * model.macs_per_pixel / rate
        step_seconds = adaptation_step_seconds(model.architecture, model.macs_per_pixel, device, threads,
                                               uses_reference)
        check_seconds = SELF_CHECK_SECONDS + scorings * scoring_seconds + timed_steps * step_seconds
        if steps and not timed_steps:
            conditional_seconds = steps * step_seconds + scoring_seconds
        if not model.texture_transfer:
            margin = profile_block_margin(model.arguments.get("context", 0))
            block_share = float(np.prod([min(1.0, (PROFILE_BLOCK + 2 * margin) / target.size[a])
                                         for a in range(3) if a not in upsampled]))
            check_seconds += network_seconds * block_share
    if uses_reference and (register_reference or self_check):
        # Without registration the self-check still measures where registration would move the reference.
        seconds += source.voxel_count * REGISTRATION_SECONDS_PER_INPUT_VOXEL_THREAD / threads
    total = float(seconds + check_seconds)
    return Plan(source, target, factors, upsampled, chosen, model, uses_reference, reference_mode,
                device, threads, batch_size, tile, int(memory), total, notes, check_seconds,
                steps, warnings, steps_alone, total + conditional_seconds if conditional_seconds else 0.0)


def normal_axis_name(plane: str) -> str:
    """The axis ('i', 'j' or 'k') normal to a plane's slices, e.g. 'k' for 'ij'."""
    return next(a for a in AXIS_NAMES if a not in plane)


def tiles_per_call(device: str, batch_size: int) -> int:
    """Tiles the network takes at once: a slice group's `batch_size`, or `CPU_TILES_PER_CALL` of them on a CPU
    in float32."""
    in_float32_on_cpu = device.split(":")[0] == "cpu" and not uses_bfloat16(device)
    return min(batch_size, CPU_TILES_PER_CALL) if in_float32_on_cpu else batch_size


def on_gpu(device: str) -> bool:
    return device.startswith(("cuda", "mps"))


def gpu_share(device: str) -> float:
    """The device's speed as a share of the CUDA rates above."""
    return MPS_SHARE_OF_CUDA if device == "mps" else 1.0


def adaptation_step_seconds(architecture: str, macs_per_pixel: int, device: str, threads: int,
                            with_reference: bool = True) -> float:
    """Estimated seconds of one fine-tuning step of `ADAPT_BATCH` patches of `ADAPT_PATCH`² (without a
    reference, some architectures fine-tune only their later layers: cheaper)."""
    per_thread = TRAINING_MACS_PER_SECOND_PER_THREAD.get(architecture, THIN_NETWORK_TRAINING_MACS_PER_SECOND_PER_THREAD)
    rate = CUDA_TRAINING_MACS_PER_SECOND * gpu_share(device) if on_gpu(device) else per_thread * threads
    if uses_bfloat16(device):
        rate *= BFLOAT16_TRAINING_SPEEDUP.get(architecture, 1.0)
    elif not on_gpu(device):
        rate *= CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION.get(cpu_vector_extension(), {}).get(architecture, 1.0)
    if not with_reference:
        rate *= LATER_HALF_SPEEDUP.get(architecture, 1.0)
    return STEP_OVERHEAD_SECONDS + max(1, macs_per_pixel) * ADAPT_BATCH * ADAPT_PATCH ** 2 / rate


def adaptation_steps(seconds: float, architecture: str, macs_per_pixel: int, device: str, threads: int,
                     with_reference: bool = True, ceiling: int | None = None) -> int:
    """Fine-tuning steps that fit in about `seconds`, at most `ceiling` (the model's `adapt_steps`, else
    `MAX_ADAPT_STEPS`): counted, not timed, so that the same input gives the same output on every run."""
    per_step = adaptation_step_seconds(architecture, macs_per_pixel, device, threads, with_reference)
    return min(ceiling or MAX_ADAPT_STEPS, max(5, int(seconds / per_step)))


def resolve_reference_mode(card: ModelCard, has_reference: bool, requested: str | None,
                           texture_models: list[str] = ()) -> str | None:
    """The texture-transfer reference mode of a run (None for other models): as asked, or paired with a
    reference and self without one; refuses a mode the model or the inputs cannot serve."""
    if requested is not None and requested not in REFERENCE_MODES:
        raise MRISuperResError(f"Unknown reference mode {requested!r}; use one of {', '.join(REFERENCE_MODES)}.")
    if not card.texture_transfer:
        if requested in ("unpaired", "self"):
            raise MRISuperResError(
                f"Model {card.name} does not do texture transfer, so it has no {requested} reference mode; choose a "
                f"texture-transfer model ({', '.join(texture_models) or 'none installed'}) or leave the mode out.")
        return None
    mode = requested or ("paired" if has_reference else "self")
    if mode not in card.supported_reference_modes:
        raise MRISuperResError(f"Model {card.name} supports the reference modes {', '.join(card.supported_reference_modes)}, "
                               f"not {mode}.")
    if mode != "self" and not has_reference:
        raise MRISuperResError(f"The {mode} reference mode needs a reference volume; give one, or use the self mode.")
    if mode == "self" and has_reference:
        raise MRISuperResError("The self reference mode takes texture from the input's own high-resolution planes, "
                               "not from a reference volume; leave the reference out or choose the paired or unpaired mode.")
    return mode


def check_memory(plan: Plan, force: bool = False) -> None:
    """Refuse a plan whose estimated peak exceeds the memory available now, unless forced."""
    available = available_memory_bytes()
    if plan.memory_bytes > available and not force:
        raise MRISuperResError(
            f"The output {plan.target.describe()} needs about {format_bytes(plan.memory_bytes)} but only "
            f"{format_bytes(available)} is available; ask for a coarser target spacing, or pass --force to try anyway.")
