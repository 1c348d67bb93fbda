"""The model registry: `models.json` cards, sha256-verified weights, and the built-in `cubic` baseline.

The registry folder is `MRISuperRes/Resources/Models/` unless `--models-dir` or the environment variable
`MRISUPERRES_MODELS_DIR` names another; it holds `models.json` and the weight files it names.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import MRISuperResError

MODELS_DIR_VARIABLE = "MRISUPERRES_MODELS_DIR"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
INTERPOLATION = "cubic"
# Where texture-transfer models take their texture from (see MRISuperResLib.texture).
REFERENCE_MODES = ("paired", "unpaired", "self")
# Architectures that map the confidence of their own reference matches (besides texture transfer).
CONFIDENCE_ARCHITECTURES = ("daasr",)


@dataclass(frozen=True)
class ModelCard:
    """One entry of `models.json`: what a model is, what it needs and how well it did."""

    name: str
    title: str
    description: str
    architecture: str
    arguments: dict = field(default_factory=dict)
    weights: str | None = None
    sha256: str | None = None
    parameters: int = 0
    uses_reference: bool = False
    degradation: str = ""
    factors: list = field(default_factory=list)
    inplane_factors: list = field(default_factory=list)  # in-plane factors trained for (none: thick slices only)
    macs_per_pixel: int = 0
    training_data: str = ""
    training: str = ""
    validation: dict = field(default_factory=dict)
    # Texture-transfer models: the reference modes they were trained for (empty: all of REFERENCE_MODES).
    reference_modes: list = field(default_factory=list)
    # The finest voxel spacing of its training volumes, smallest and largest over them, in mm (empty: not
    # recorded). The networks work in voxels, so an input far finer or coarser shows its anatomy at another scale.
    spacings: list = field(default_factory=list)
    # The per-scan fine-tuning steps after which adaptation gained no more on val/ ("reference": with one, the
    # whole network; "alone": without, what `adapt.adapted_parameters` names): a ceiling on the steps the
    # plan's seconds allow, so a faster CPU or a GPU finishes sooner (empty: `plan.MAX_ADAPT_STEPS`).
    adapt_steps: dict = field(default_factory=dict)

    def adapt_step_ceiling(self, with_reference: bool) -> int | None:
        """The most fine-tuning steps worth taking, with or without a reference (None: no ceiling of its own)."""
        return self.adapt_steps.get("reference" if with_reference else "alone")

    @property
    def is_interpolation(self) -> bool:
        return self.architecture == INTERPOLATION

    @property
    def texture_transfer(self) -> bool:
        return bool(self.arguments.get("texture_transfer"))

    @property
    def maps_confidence(self) -> bool:
        """Whether a run can also give a 0–1 confidence map of the reference matches it used."""
        return self.texture_transfer or self.architecture in CONFIDENCE_ARCHITECTURES

    @property
    def trained_factors(self) -> tuple[float, ...]:
        """The thick-slice factors the model was trained for; empty when its card names none (cubic: "any")."""
        if self.factors and all(isinstance(f, (int, float)) for f in self.factors):
            return tuple(self.factors)
        return ()

    @property
    def supported_reference_modes(self) -> tuple[str, ...]:
        """The reference modes a run of this model can use: none without texture transfer."""
        if not self.texture_transfer:
            return ()
        return tuple(self.reference_modes or REFERENCE_MODES)

    def to_json(self) -> dict:
        return asdict(self)


CUBIC_CARD = ModelCard(
    name=INTERPOLATION, title="Cubic interpolation",
    description="Separable cubic (Catmull-Rom) interpolation along the upsampled axes; the baseline every "
                "model must beat. Needs no weights and ignores the reference.",
    architecture=INTERPOLATION, degradation="any", factors=["any"])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    """The models of one registry folder, by name, with `cubic` always present."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder or os.environ.get(MODELS_DIR_VARIABLE) or DEFAULT_MODELS_DIR)
        manifest = self.folder / "models.json"
        self.cards: dict[str, ModelCard] = {INTERPOLATION: CUBIC_CARD}
        self.default_name = INTERPOLATION
        # The model to suggest where the default is slow (a CPU): models.json's "fast", when it has one.
        self.fast_name: str | None = None
        if not manifest.is_file():
            if folder is not None or os.environ.get(MODELS_DIR_VARIABLE):
                raise MRISuperResError(f"The models folder '{self.folder}' has no models.json; point --models-dir at a folder that has one.")
            return
        try:
            content = json.loads(manifest.read_text(encoding="utf-8"))
            for entry in content["models"]:
                card = ModelCard(**entry)
                self.cards[card.name] = card
        except (ValueError, KeyError, TypeError) as error:
            raise MRISuperResError(f"The model list '{manifest}' is malformed ({error}); restore it from the release.") from None
        # A folder of one's own models without a "default" (made by `train --install` before it set one):
        # its first model, not plain interpolation, which a run without --model would otherwise silently be.
        self.default_name = content.get("default") or next((n for n in self.cards if n != INTERPOLATION),
                                                           INTERPOLATION)
        self.fast_name = content.get("fast") if content.get("fast") in self.cards else None

    @property
    def default(self) -> ModelCard:
        return self.get(self.default_name)

    def names(self) -> list[str]:
        return list(self.cards)

    def get(self, name: str | None) -> ModelCard:
        if name is None:
            return self.default
        if name not in self.cards:
            raise MRISuperResError(f"Unknown model '{name}'; choose one of: {', '.join(self.cards)} (see `mrisuperres models`).")
        return self.cards[name]

    def weights_path(self, card: ModelCard) -> Path:
        return self.folder / card.weights

    def verified_weights(self, card: ModelCard) -> Path:
        """The weight file of `card`, after checking it exists and matches its sha256."""
        path = self.weights_path(card)
        if not path.is_file():
            raise MRISuperResError(f"The weights of model '{card.name}' are missing ({path}); reinstall the extension or restore the file.")
        actual = sha256_of(path)
        if actual != card.sha256:
            raise MRISuperResError(
                f"The weights of model '{card.name}' are corrupted ({path} has sha256 {actual[:12]}…, "
                f"expected {str(card.sha256)[:12]}…); reinstall the extension or restore the file.")
        return path


def install_model(weights: Path, card: dict, folder: str | os.PathLike | None = None) -> Path:
    """Copy `weights` into a models folder and add or replace `card` in its models.json (keeping its place
    in the list); returns the manifest's path. The one place that writes models.json."""
    import shutil

    target = Path(folder or os.environ.get(MODELS_DIR_VARIABLE) or DEFAULT_MODELS_DIR)
    target.mkdir(parents=True, exist_ok=True)
    if Path(weights).resolve() != (target / Path(weights).name).resolve():
        shutil.copy(weights, target / Path(weights).name)
    return update_manifest(target, lambda manifest: _upsert(manifest, card))


def _upsert(manifest: dict, card: dict) -> None:
    manifest.setdefault("default", card["name"])  # a new folder's first model is what its runs use
    names = [m["name"] for m in manifest["models"]]
    if card["name"] in names:
        manifest["models"][names.index(card["name"])] = card
    else:
        manifest["models"].append(card)


def update_manifest(folder: str | os.PathLike, change) -> Path:
    """Read a folder's models.json (or start one), let `change(manifest)` edit it, write it back atomically."""
    path = Path(folder) / "models.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"models": []}
    change(manifest)
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    staging.replace(path)
    return path


def load_network(registry: ModelRegistry, card: ModelCard, device):
    """Build the network of `card`, load its verified weights, and put it in evaluation mode on `device`."""
    import torch

    from .architectures import ARCHITECTURES, build_architecture

    if card.architecture not in ARCHITECTURES:
        raise MRISuperResError(f"Model '{card.name}' needs architecture '{card.architecture}', which this version does not have; update MRISuperRes.")
    path = registry.verified_weights(card)
    network = build_architecture(card.architecture, card.arguments)
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, ValueError) as error:
        raise MRISuperResError(f"The weights of model '{card.name}' do not fit its architecture ({str(error).splitlines()[0]}); reinstall the extension.") from None
    return network.to(device, memory_format=torch.channels_last).eval()
