"""Learning from the scan itself: training pairs from its own acquired planes, the self-check that
estimates a model's gain over cubic on *this* scan, and per-scan fine-tuning (`--adapt`).

A thick-slice scan is sharp along its acquired axes. Coarsening one of them by the run's factor, with the
same slab convention, slice profile and pre-interpolation as the thick axis (`degrade.thick_slices`, with
the nearer of box and Gaussian given the pretrained model's output on a central block, `pipeline`;
`resample.preinterpolate`), gives pairs whose truth is the scan itself: slices of the planes holding that
axis, oriented with it along rows as inference orients the thick axis, with the reference (resampled onto
the scan's own grid) at the same place. Whole slices are held out (every fifth) to score the model without
letting fine-tuning see them. Every pair serves the check; fine-tuning learns only from pairs whose columns
run along the kind of axis (sharp, or upsampled) that the run's planes have along theirs
(`ScanPairs.like_inference`): on a scan whose only pairs differ there, it is skipped, unless the pretrained
model loses to cubic on them (then they are all it has; `pipeline._check_and_adapt`). So is fine-tuning on an
input that looks coarse in-plane (k-space truncated) rather than thick-sliced, which a slice profile does not
mimic (`pipeline._adaptation_mismatch`). When the run will make
its output consistent with the input's slices, each pair also carries the projector onto what its own coarse
slices see along its rows: the check scores, and fine-tuning learns, only the error that step leaves.

One difference from inference stays: in these pairs the slice normal is often the thick axis, so a 2.5D
model's neighbouring slices are a thick slice apart rather than one voxel; the estimate is therefore, if
anything, pessimistic for 2.5D models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch

from .consistency import profile_matrix, range_projector
from .degrade import thick_slices
from .devices import autocast
from .geometry import resampled_grid
from .inference import factor_argument, oriented_slices, with_neighbours
from .plan import ADAPT_BATCH, ADAPT_PAIRS, ADAPT_PAIRS_WITH_REFERENCE, ADAPT_PATCH, HOLDOUT_EVERY
from .progress import CancelFlag, ProgressCallback, StageReporter
from .resample import preinterpolate
from .texture import TextureSource
from .volume import AXIS_NAMES, Volume

PATCH = ADAPT_PATCH
MIN_PATCH = 24
# Patches drawn from the scan's planes. Without a reference, 256 left fine-tuning 7-12 passes over about 200
# patches, and more steps then fitted the scan's own planes, not its thick axis; with 2048 the gain grows with
# the steps (and the card's ceiling with it). With a reference the run uses the first 256 only (the patches it
# always used): 1024 or 2048 cost up to 0.24 dB there as users run it (val/, 4x thick; README, *Validation*,
# "More patches").
PAIRS = ADAPT_PAIRS
PAIRS_WITH_REFERENCE = ADAPT_PAIRS_WITH_REFERENCE
HOLDOUT_PHASE = 2       # slices with index % HOLDOUT_EVERY == HOLDOUT_PHASE are held out
MIN_HELD_OUT = 4
FOREGROUND = 0.05       # patches whose truth is darker than this on average are mostly background
ADAPT_LEARNING_RATE = 1e-4
# The adapted weights are kept only when they beat the pretrained ones on the held-out pairs by this much.
KEEP_MARGIN_DB = 0.02
# The reference is used only when the model scores better with it than without it on the held-out pairs by
# more than this. On val/ (edsr-large, 4x thick) aligned pairs score +1.3 to +2.1 dB with the reference;
# references 5-10 mm or 6-10 degrees off, and BraTS's at 2 mm or with inverted contrast, score -0.4 to +0.1.
REFERENCE_MARGIN_DB = 0.0


@dataclass
class ScanPairs:
    """Patches from the scan's own acquired planes: network input (with 2.5D neighbours), truth,
    reference and its mask, and which patches are held out."""

    lr: torch.Tensor
    truth: torch.Tensor
    reference: torch.Tensor
    mask: torch.Tensor
    holdout: torch.Tensor  # bool (N,)
    factor: float = 0.0    # the coarsening along the rows (networks that degrade their reference need it)
    # Texture-transfer networks: their projection of the texture matched for these patches (`with_paired_texture`).
    texture: torch.Tensor | None = None
    # bool (N,): the patch's columns run along an axis of the kind (sharp or upsampled) that the run's planes
    # have along their columns, so fine-tuning on it teaches what inference asks (None: all are).
    like_inference: torch.Tensor | None = None
    # (N, rows, rows): each patch's `consistency.range_projector` along its coarsened rows, when the run's output
    # will be made consistent with its slices: the error in that range is then projected away, so fine-tuning
    # and scoring count only the rest (None: the plain error).
    projection: torch.Tensor | None = None

    def subset(self, chosen: torch.Tensor) -> "ScanPairs":
        def pick(x):
            return None if x is None else x[chosen]

        return ScanPairs(self.lr[chosen], self.truth[chosen], self.reference[chosen], self.mask[chosen],
                         self.holdout[chosen], self.factor, pick(self.texture), pick(self.like_inference),
                         pick(self.projection))

    @property
    def for_fine_tuning(self) -> torch.Tensor:
        """bool (N,): the patches fine-tuning learns from (not held out, and like inference's slices)."""
        return ~self.holdout if self.like_inference is None else ~self.holdout & self.like_inference

    def __len__(self) -> int:
        return self.lr.shape[0]

    @property
    def has_reference(self) -> bool:
        return bool(self.mask.any())

    def without_reference(self) -> "ScanPairs":
        """The same pairs with a blank reference and mask, as the networks see "no reference" (and no texture)."""
        return ScanPairs(self.lr, self.truth, torch.zeros_like(self.reference), torch.zeros_like(self.mask),
                         self.holdout, self.factor, like_inference=self.like_inference, projection=self.projection)

    def with_paired_texture(self, project, device: torch.device) -> "ScanPairs":
        """The pairs with the texture a paired run gives a texture-transfer network: matched in each patch's
        own reference, blurred as the patch's rows were coarsened, and projected by the network (`project`)."""
        source = TextureSource.paired(device=device)
        factors = (self.factor, 1.0)
        features, margins = source.features(self.lr[:, 0].numpy(), factors, self.reference[:, 0].numpy(),
                                            self.mask[:, 0].numpy())
        projected, _ = source.place(features, margins, factors, tuple(self.lr.shape[-2:]), project)
        return replace(self, texture=torch.from_numpy(projected))


def scan_pairs(scan: np.ndarray, volume: Volume, upsampled: tuple[int, ...], factor: float,
               reference: np.ndarray | None, context: int = 0, count: int = PAIRS, seed: int = 0,
               run_planes: tuple[str, ...] = (), profile: str = "box",
               projected: bool = False) -> tuple[ScanPairs | None, str]:
    """Pairs from `scan` (the input on its own grid, normalised) coarsened `factor`× along each acquired
    axis in turn with the slice `profile` (`degrade.PROFILES`); `reference`: the reference on the same grid,
    normalised (None: without); `run_planes`: the run's planes, which say what kind of axis inference has along
    its columns (`ScanPairs.like_inference`; none given: every pair counts as like them); `projected`: the run
    makes its output consistent with its slices (`ScanPairs.projection`). Returns the pairs, or None and the
    reason there are none."""
    acquired = [axis for axis in range(3) if axis not in upsampled]
    if not acquired:
        return None, "every axis of the input is upsampled, so it has no sharp axis to learn from"
    k = max(2, int(round(factor)))
    instances = []
    native = volume.with_array(scan)
    for axis in acquired:
        if scan.shape[2 - axis] < 3 * k:
            continue
        coarse = thick_slices(native, axis, k, profile)
        interpolated = preinterpolate(coarse, resampled_grid(coarse.grid, volume.spacing)).array
        crop = tuple(slice(0, n) for n in interpolated.shape)
        acquisition = (profile_matrix(profile, coarse.array.shape[2 - axis], interpolated.shape[2 - axis],
                                      coarse.spacing[axis], volume.spacing[axis]) if projected else None)
        instances.append((axis, interpolated, scan[crop], None if reference is None else reference[crop], acquisition))
    if not instances:
        return None, f"its acquired axes are too short for {k}× coarsening"

    rng = np.random.default_rng(seed)
    # Inference orients an upsampled axis along rows; its columns run along a sharp axis, or along another
    # upsampled one in a plane that holds two.
    sharp_columns_at_inference = {any(AXIS_NAMES.index(name) not in upsampled for name in plane)
                                  for plane in run_planes}
    planes = []
    for axis, lr, truth, ref, acquisition in instances:
        rows = 2 - axis
        for columns in range(3):
            if columns == rows:
                continue
            size = min(PATCH, lr.shape[rows], lr.shape[columns])
            if size >= MIN_PATCH:
                like = not run_planes or (2 - columns not in upsampled) in sharp_columns_at_inference
                planes.append((oriented_slices(lr, rows, columns), oriented_slices(truth, rows, columns),
                               None if ref is None else oriented_slices(ref, rows, columns), size, like, acquisition))
    if not planes:
        return None, f"its slices are smaller than {MIN_PATCH} pixels"
    # Patches as large as the best planes allow: a plane across the thick axis has few pixels that way
    # (and its columns run along a coarse axis, unlike anything inference sees), so it would shrink them all.
    size = max(p[3] for p in planes)
    planes = [p for p in planes if p[3] == size]
    items = {"lr": [], "truth": [], "reference": [], "mask": [], "holdout": [], "like_inference": [], "projection": []}
    attempts = 0
    # `count` patches, or as many more as it takes to hold out `MIN_HELD_OUT` to score; a draw of fewer is the
    # start of a draw of more (the same seed), so a run that drops its reference draws the rest anew.
    held_out = 0
    while (len(items["lr"]) < count or held_out < MIN_HELD_OUT) and attempts < count * 20:
        attempts += 1
        lr, truth, ref, _, like, acquisition = planes[rng.integers(len(planes))]
        s = int(rng.integers(lr.shape[0]))
        r = int(rng.integers(lr.shape[1] - size + 1))
        c = int(rng.integers(lr.shape[2] - size + 1))
        truth_patch = truth[s, r:r + size, c:c + size]
        if truth_patch.mean() < FOREGROUND and rng.random() < 0.9:
            continue
        items["lr"].append(with_neighbours(lr[:, r:r + size, c:c + size], s, 1, context)[0])
        items["truth"].append(truth_patch[None])
        if ref is None:
            items["reference"].append(np.zeros((1, size, size), np.float32))
            items["mask"].append(np.zeros((1, size, size), np.float32))
        else:
            items["reference"].append(ref[s, r:r + size, c:c + size][None])
            items["mask"].append(np.ones((1, size, size), np.float32))
        items["holdout"].append(s % HOLDOUT_EVERY == HOLDOUT_PHASE)
        held_out += items["holdout"][-1]
        items["like_inference"].append(like)
        if acquisition is not None:
            items["projection"].append(range_projector(acquisition, r, size))
    if len(items["lr"]) < 16 or held_out < MIN_HELD_OUT:
        return None, "it has too little foreground in its acquired planes"
    tensors = {name: torch.from_numpy(np.stack(values, dtype=np.float32)) for name, values in items.items()
               if name not in ("holdout", "like_inference", "projection")}
    return ScanPairs(**tensors, holdout=torch.tensor(items["holdout"]), factor=float(k),
                     like_inference=torch.tensor(items["like_inference"]),
                     projection=torch.from_numpy(np.stack(items["projection"], dtype=np.float32))
                     if projected else None), ""


def _error(output: torch.Tensor, truth: torch.Tensor, projection: torch.Tensor | None) -> torch.Tensor:
    """output − truth, less its part along each patch's rows that the run's consistency step projects away."""
    error = output.float() - truth
    if projection is None:
        return error
    return error - torch.einsum("nij,ncjw->nciw", projection, error)


def _pooled_psnr(squared_errors: list[torch.Tensor]) -> float:
    mse = float(torch.cat([e.flatten() for e in squared_errors]).double().mean())
    return float("inf") if mse == 0 else float(-10 * np.log10(mse))


def score(network: torch.nn.Module, pairs: ScanPairs, device: torch.device, batch: int = 16) -> tuple[float, float]:
    """PSNR (data range 1, pooled over the patches) of the network and of cubic interpolation."""
    was_training = network.training
    network.eval()
    model_errors, cubic_errors = [], []
    with torch.inference_mode(), autocast(device):
        for first in range(0, len(pairs), batch):
            lr, truth, ref, mask = (x[first:first + batch].to(device) for x in
                                    (pairs.lr, pairs.truth, pairs.reference, pairs.mask))
            texture = {} if pairs.texture is None else {"texture": pairs.texture[first:first + batch].to(device)}
            projection = None if pairs.projection is None else pairs.projection[first:first + batch].to(device)
            output = network(lr, ref, mask, **texture, **factor_argument(network, pairs.factor))
            model_errors.append(_error(output, truth, projection) ** 2)
            cubic_errors.append((lr[:, :1] - truth) ** 2)
    network.train(was_training)
    return _pooled_psnr(model_errors), _pooled_psnr(cubic_errors)


def adapted_parameters(network: torch.nn.Module, whole_network: bool) -> list[torch.nn.Parameter]:
    """The parameters fine-tuning changes: all with `whole_network`; else those the network names
    (`adaptation_parameters`: EDSR leaves its early layers as trained and fits 1.8x the steps), or all when it
    names none."""
    chosen = None if whole_network else getattr(network, "adaptation_parameters", None)
    return list(chosen() if chosen is not None else network.parameters())


def fine_tune(network: torch.nn.Module, pairs: ScanPairs, steps: int, device: torch.device, seed: int = 0,
              progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
              whole_network: bool | None = None, learning_rate: float = ADAPT_LEARNING_RATE) -> torch.nn.Module:
    """A copy of `network` fine-tuned on the pairs that are not held out (L1, Adam, flips), seeded.

    `whole_network` None: the whole network when the pairs carry a reference, else only its
    `adapted_parameters`. Without a reference, EDSR's later half gave on val/ (4x thick) +0.21 dB over the
    network alone against +0.15 for the whole network, and on the spine case, whose own planes differ from
    the thick axis's, −0.08 against −0.18; with one it gained nothing in the same seconds (−0.01 to +0.03 dB
    on three cases), and the early layers are where the reference's contrast is mapped onto the input's
    (README, *Adaptation, later half only*). True or False force either, for comparisons."""
    training = pairs.subset(pairs.for_fine_tuning)
    adapted = copy.deepcopy(network).train()
    trainable = adapted_parameters(adapted, pairs.has_reference if whole_network is None else whole_network)
    chosen_ids = {id(p) for p in trainable}
    for parameter in adapted.parameters():
        parameter.requires_grad_(id(parameter) in chosen_ids)
    optimiser = torch.optim.Adam(trainable, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    reporter = StageReporter("adapt", steps, progress, cancel)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(steps):
            chosen = torch.randint(len(training), (min(ADAPT_BATCH, len(training)),), generator=generator)
            lr, truth, ref, mask = (x[chosen] for x in (training.lr, training.truth, training.reference, training.mask))
            projection = None if training.projection is None else training.projection[chosen]
            flips = [d for d, flip in zip((-2, -1), torch.rand(2, generator=generator) < 0.5) if flip]
            if flips:
                lr, truth, ref, mask = (x.flip(flips) for x in (lr, truth, ref, mask))
                if projection is not None and -2 in flips:  # the rows reversed: P becomes J P J
                    projection = projection.flip((-2, -1))
            with autocast(device):
                output = adapted(*(x.to(device) for x in (lr, ref, mask)), **factor_argument(adapted, pairs.factor))
            loss = _error(output, truth.to(device), None if projection is None else projection.to(device)).abs().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            reporter.advance()
    return adapted.eval()
