"""The model registry: listing, cards, overrides, and sha256-verified loading."""

from __future__ import annotations

import json

import pytest
import torch

from MRISuperResLib import MRISuperResError
from MRISuperResLib.models.architectures import ARCHITECTURES
from MRISuperResLib.models.blocks import ReplicateConv2d
from MRISuperResLib.models.registry import ModelRegistry, load_network
from MRISuperResLib.models.registry import sha256_of


def test_shipped_registry_has_cubic_and_verified_trained_models():
    registry = ModelRegistry()
    assert "cubic" in registry.names()
    trained = [card for card in registry.cards.values() if not card.is_interpolation]
    assert trained, "at least one trained model ships"
    for card in trained:
        assert card.architecture in ARCHITECTURES
        path = registry.verified_weights(card)
        assert path.stat().st_size < 10 * 1024 * 1024
        network = load_network(registry, card, torch.device("cpu"))
        assert sum(p.numel() for p in network.parameters()) == card.parameters
        assert card.training_data and card.validation
    assert registry.default_name in registry.names()


def test_models_command_lists_every_model(cli):
    code, out, _ = cli("models")
    assert code == 0 and "cubic" in out and "(* = default)" in out
    assert "thick 2-6x, in-plane 2/4x" in out and "any" not in out  # what each model was trained for
    code, out, _ = cli("models", "--json")
    listed = json.loads(out)
    assert listed["default"] in [m["name"] for m in listed["models"]]


def test_environment_variable_overrides_the_registry_folder(untrained_models_dir, monkeypatch):
    monkeypatch.setenv("MRISUPERRES_MODELS_DIR", str(untrained_models_dir))
    registry = ModelRegistry()
    assert registry.names() == ["cubic", "tiny"] and registry.default_name == "tiny"


def test_a_folder_of_ones_own_models_without_a_default_uses_its_first_model(untrained_models_dir):
    manifest = json.loads((untrained_models_dir / "models.json").read_text())
    del manifest["default"]
    (untrained_models_dir / "models.json").write_text(json.dumps(manifest))
    assert ModelRegistry(untrained_models_dir).default_name == "tiny"


def test_a_folder_without_models_json_is_refused(tmp_path):
    with pytest.raises(MRISuperResError, match="has no models.json"):
        ModelRegistry(tmp_path)


def test_malformed_models_json_is_refused(untrained_models_dir):
    (untrained_models_dir / "models.json").write_text("{not json")
    with pytest.raises(MRISuperResError, match="is malformed"):
        ModelRegistry(untrained_models_dir)


def test_weights_of_another_architecture_are_refused(untrained_models_dir):
    registry = ModelRegistry(untrained_models_dir)
    weights = untrained_models_dir / "tiny.pt"
    torch.save({"unexpected": torch.zeros(1)}, weights)
    card = registry.get("tiny")
    object.__setattr__(card, "sha256", sha256_of(weights))
    with pytest.raises(MRISuperResError, match="do not fit its architecture"):
        load_network(registry, card, torch.device("cpu"))


def test_models_command_stops_quietly_when_its_reader_goes_away():
    import subprocess
    import sys

    command = [sys.executable, "-c", "import sys; from MRISuperResLib.cli import main; sys.exit(main(['models']))"]
    for _ in range(3):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process.stdout.close()  # like `mrisuperres models | head -c 0`
        _, error = process.communicate(timeout=60)
        assert b"Traceback" not in error


@pytest.mark.parametrize("kernel", [1, 3, 5, 9])
@pytest.mark.parametrize("shape", [(2, 3, 37, 23), (1, 3, 9, 9), (1, 3, 3, 40), (1, 3, 1, 1)])
def test_the_border_corrected_convolution_equals_torchs_replicate_padding(kernel, shape):
    torch.manual_seed(kernel)
    reference = torch.nn.Conv2d(3, 4, kernel, padding=kernel // 2, padding_mode="replicate")
    corrected = ReplicateConv2d(3, 4, kernel)
    corrected.load_state_dict(reference.state_dict())
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_()
        expected, got = reference(x), corrected(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        # Training goes through it too: the gradients must agree as well.
        weights = torch.randn_like(expected)
        expected_grads = torch.autograd.grad((expected * weights).sum(), [x, reference.weight])
        got_grads = torch.autograd.grad((got * weights).sum(), [x, corrected.weight])
        for e, g in zip(expected_grads, got_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)
