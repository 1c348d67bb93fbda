"""Shared fixtures: small synthetic volumes with oblique geometry, and CLI invocation helpers."""

from __future__ import annotations

import hashlib
import locale
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MRISuperRes"))

from MRISuperResLib import Volume  # noqa: E402
from MRISuperResLib.cli import main as cli_main  # noqa: E402
from MRISuperResLib.io import write_volume  # noqa: E402


@pytest.fixture(autouse=True)
def _locale_kept():
    """Each test starts with the locale the session had: ITK's DICOM writer switches the process to the C
    locale, after which `text=True` subprocess output (UTF-8, e.g. '×') no longer decodes in later tests."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


OBLIQUE = rotation("x", 17) @ rotation("z", -31) @ rotation("y", 8)
FLIPPED = np.diag([-1.0, 1.0, -1.0]) @ rotation("z", 90)


def smooth_volume(shape_kji=(12, 40, 36), spacing=(0.9, 0.9, 4.0), origin=(12.5, -30.0, 7.25),
                  direction=OBLIQUE, seed: int = 0) -> Volume:
    """A smooth, non-trivial volume (blobs on a background) with the given geometry."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape_kji), indexing="ij")
    array = 100 + 50 * np.exp(-((i - 0.2) ** 2 + j ** 2 + (k + 0.1) ** 2) * 4)
    array += 20 * np.sin(6 * i) * np.cos(5 * j) + rng.normal(0, 1, shape_kji)
    return Volume(array.astype(np.float32), spacing, origin, direction)


def run_cli(*args: str, capsys=None) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_refused(cli, tmp_path: Path, args, expected: str, inputs=(), output: Path | None = None,
                   command: str = "run") -> str:
    """`mrisuperres COMMAND ARGS -o OUTPUT --quiet` refuses with `expected` in one sentence and exit code 2,
    writes nothing anywhere under `tmp_path` (no output, nothing half-written) and leaves `inputs` as they were.
    Returns the message."""
    output = tmp_path / "out.nii.gz" if output is None else output
    hashes = {p: digest(p) for p in inputs}
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}
    code, _, err = cli(command, *args, "-o", output, *(["--quiet"] if command == "run" else []))
    message = err.strip()
    assert code == 2, message
    assert message.startswith("mrisuperres: error: ") and expected in message, message
    assert message.count("\n") == 0 and message.endswith(".")  # one sentence
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")} == before
    assert all(digest(p) == h for p, h in hashes.items())
    return message


@pytest.fixture
def thick_file(tmp_path: Path) -> Path:
    path = tmp_path / "thick.nii.gz"
    write_volume(smooth_volume(), path)
    return path


@pytest.fixture
def cli(capsys):
    return lambda *args: run_cli(*args, capsys=capsys)


@pytest.fixture
def untrained_models_dir(tmp_path: Path) -> Path:
    """A registry folder holding one randomly initialised reference model, for plumbing tests."""
    import json

    import torch

    from MRISuperResLib.models.architectures import build_architecture
    from MRISuperResLib.models.registry import sha256_of

    folder = tmp_path / "models"
    folder.mkdir()
    arguments = {"features": 8, "mapped": 4, "reference_features": 4, "use_reference": True}
    torch.manual_seed(0)
    torch.save(build_architecture("srcnn", arguments).state_dict(), folder / "tiny.pt")
    card = {"name": "tiny", "title": "Untrained tiny SRCNN", "description": "plumbing only",
            "architecture": "srcnn", "arguments": arguments, "weights": "tiny.pt",
            "sha256": sha256_of(folder / "tiny.pt"), "parameters": 0, "uses_reference": True,
            "degradation": "none", "factors": [2, 3, 4, 5, 6], "macs_per_pixel": 1500}
    (folder / "models.json").write_text(json.dumps({"default": "tiny", "models": [card]}))
    return folder


@pytest.fixture
def texture_models_dir(tmp_path: Path) -> Path:
    """A registry folder with a randomly initialised texture-transfer SRCNN (its texture branch not zero, so
    that texture changes the output) and a plain one, for plumbing tests."""
    import json

    import torch

    from MRISuperResLib.models.architectures import build_architecture
    from MRISuperResLib.models.registry import sha256_of

    folder = tmp_path / "texture-models"
    folder.mkdir()
    cards = []
    for name, texture in (("tiny-tt", True), ("tiny", False)):
        arguments = {"features": 8, "mapped": 4, "reference_features": 4, "use_reference": True,
                     "texture_transfer": texture}
        torch.manual_seed(0)
        network = build_architecture("srcnn", arguments)
        if texture:
            torch.nn.init.normal_(network.texture.expand.weight, std=0.1)
        torch.save(network.state_dict(), folder / f"{name}.pt")
        cards.append({"name": name, "title": name, "description": "plumbing only", "architecture": "srcnn",
                      "arguments": arguments, "weights": f"{name}.pt", "sha256": sha256_of(folder / f"{name}.pt"),
                      "uses_reference": True, "factors": [2, 3, 4, 5, 6], "macs_per_pixel": 1500,
                      "reference_modes": ["paired", "unpaired", "self"] if texture else []})
    (folder / "models.json").write_text(json.dumps({"default": "tiny-tt", "models": cards}))
    return folder
