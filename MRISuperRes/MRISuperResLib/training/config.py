"""A training run's settings, read from YAML and checked before any data is touched.

Every key of the YAML is a field below (unknown keys are refused: a typo must not silently train with a
default). `train` and `val` list target / reference pairs relative to the data folder:

    - {target: sub01/T2.nii.gz, reference: sub01/T1.nii.gz, mask: sub01/brainmask.nii.gz, axes: [0, 1]}

`axes` are the voxel axes (0 = i, 1 = j, 2 = k) that were truly acquired at high resolution: only they are
degraded to make training pairs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MRISuperResError


def settings_from(cls, values: dict, key: str):
    """The settings dataclass `cls` from the config's `key:` mapping; unknown names are refused."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(values, dict):
        raise MRISuperResError(f"The {key} settings are wrong (not a mapping of names to values); use "
                               f"{', '.join(names)}.")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise MRISuperResError(f"The {key} settings are wrong (unknown setting(s) {', '.join(unknown)}); use "
                               f"{', '.join(names)}.")
    return cls(**values)


@dataclass(frozen=True)
class PairSpec:
    """One target contrast, its optional reference and mask, and the axes that are truly high resolution."""

    target: str
    reference: str | None
    mask: str | None
    axes: tuple[int, ...]


@dataclass
class TrainingConfig:
    name: str
    architecture: str
    train: list
    title: str = ""
    description: str = ""
    arguments: dict = field(default_factory=dict)
    uses_reference: bool = False
    initialise_from: str | None = None     # a registered model whose weights start the run
    reference_modes: list = field(default_factory=list)
    val: list = field(default_factory=list)
    # Degradations
    degradation: str = "thick slices (box or Gaussian profile)"
    factors: list = field(default_factory=lambda: [2, 3, 4, 5, 6])
    inplane_probability: float = 0.0
    inplane_factors: list = field(default_factory=lambda: [2, 4])
    noise_probability: float = 0.0
    # Intensity augmentation: target and reference each raised to a random power in [1/g, g] (0: off), so
    # that contrast relations and intensity curves unseen in train/ are less of a surprise.
    gamma_range: float = 0.0
    # Share of instances holding synthetic lesions (`lesions`; tried for small lesions, README *Pathology*).
    lesion_probability: float = 0.0
    # Reference imperfections
    shift_probability: float = 0.0
    max_shift: int = 0
    rotation_probability: float = 0.0
    max_rotation_degrees: float = 0.0
    absent_probability: float = 0.3
    # Optimisation
    seed: int = 0
    steps: int = 1000
    batch_size: int = 16
    patch_size: int = 48
    learning_rate: float = 2e-4
    lr_milestones: list = field(default_factory=list)
    # "milestones": ×0.3 at each of lr_milestones; "cosine": from learning_rate down to 0 along a half cosine
    # over `steps` (annealing a run that stopped at a constant rate, as edsr-large's GPU run did).
    lr_decay: str = "milestones"
    warmup_steps: int = 0
    checkpoint_every: int = 250
    checkpoint_minutes: float = 5.0       # also checkpoint at least this often (long steps on a CPU)
    validate_every: int = 500
    pool_instances: int = 24
    patches_per_instance: int = 160
    refresh_every: int = 40
    # Processes that simulate fresh instances in the background (0: the training process does it, exactly
    # reproducibly; more: fast enough to feed a GPU, in whatever order they finish).
    data_workers: int = 0
    # Stop (checkpointed, weights and card written) after this many minutes of training; 0: run all steps.
    time_limit_minutes: float = 0.0
    # bfloat16 autocast for the forward pass and loss (GPUs, and CPUs with AVX-512 BF16).
    bf16: bool = False
    loss: dict = field(default_factory=dict)
    # Weight of the L1 loss on each supervised intermediate output (the progressive network's first level,
    # DAASR's structure branch) next to the final output's.
    auxiliary_weight: float = 1.0
    # WGAN-GP fine-tuning (the progressive paper's adversarial stage): {weight, gradient_penalty, features,
    # learning_rate}; None: off.
    adversarial: dict | None = None
    texture: dict | None = None
    # Stages before super-resolution training (`priors`): TransMRSR's GAN-pretrained decoder
    # {steps, learning_rate, critic_features, gradient_penalty, latent_samples}, and the CNN + ViT network's
    # swapped autoencoder and cosine losses {autoencoder_steps, ..., structure, texture, vit}; None: off.
    generative_prior: dict | None = None
    disentanglement: dict | None = None

    @classmethod
    def from_dict(cls, values: dict, source: str = "the config") -> "TrainingConfig":
        if not isinstance(values, dict):
            raise MRISuperResError(f"{source} is not a YAML mapping of settings; see scripts/configs/ for examples.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MRISuperResError(f"{source} has unknown setting(s) {', '.join(unknown)}; "
                                   f"the settings are: {', '.join(sorted(known))}.")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in values]
        if missing:
            raise MRISuperResError(f"{source} lacks the required setting(s) {', '.join(missing)}.")
        config = cls(**values)
        if config.lr_decay not in ("milestones", "cosine"):
            raise MRISuperResError(f"{source} has lr_decay '{config.lr_decay}'; use 'milestones' or 'cosine'.")
        if not config.train:
            raise MRISuperResError(f"{source} lists no training pairs under 'train'; add at least one target.")
        for entry in config.train + config.val:
            if not isinstance(entry, dict) or "target" not in entry or "axes" not in entry:
                raise MRISuperResError(f"{source} has a pair without 'target' and 'axes': {entry!r}.")
        return config

    @classmethod
    def from_yaml(cls, path: Path) -> "TrainingConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise MRISuperResError(f"The training config '{path}' does not exist; give the path of a YAML file.")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise MRISuperResError(f"The training config '{path}' is not valid YAML ({str(error).splitlines()[0]}).") from None
        return cls.from_dict(values, f"The training config '{path}'")

    def pair_specs(self, which: str = "train") -> list[PairSpec]:
        return [PairSpec(e["target"], e.get("reference"), e.get("mask"), tuple(e["axes"]))
                for e in getattr(self, which)]

    def check_files(self, data_root: Path, splits: tuple[str, ...] = ("train", "val")) -> None:
        """Every file the pairs of `splits` name exists under `data_root`."""
        for spec in [spec for split in splits for spec in self.pair_specs(split)]:
            for relative in (spec.target, spec.reference, spec.mask):
                if relative and not (Path(data_root) / relative).exists():
                    raise MRISuperResError(f"The training data file '{Path(data_root) / relative}' does not exist; "
                                           "fix the path in the config or pass --data with the folder it is relative to.")

    @property
    def context(self) -> int:
        """Neighbouring slices on each side that the network takes as extra input channels (2.5D)."""
        return int(self.arguments.get("context", 0))
