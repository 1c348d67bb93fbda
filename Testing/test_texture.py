"""Texture transfer: scattering, matching, swapping, its memory bound, and the three reference modes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import smooth_volume

from MRISuperResLib.errors import MRISuperResError
from MRISuperResLib.io import read_volume, write_volume
from MRISuperResLib.models.architectures import build_architecture
from MRISuperResLib.pipeline import superresolve_with_confidence
from MRISuperResLib.scattering import Scattering
from MRISuperResLib.texture import (MatchSettings, TextureSource, acquired_planes, build_bank, calibrate_confidence,
                                    match_bank,
                                    match_window, upsample_features)

LIB = Path(__file__).resolve().parents[1] / "MRISuperRes"


def textured(shape, seed=0):
    """Foreground-bright random texture, smooth enough to look like anatomy at 1/4 resolution."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand((1, 1) + tuple(shape), generator=generator)
    return (0.3 + 0.6 * torch.nn.functional.avg_pool2d(noise, 3, 1, 1, count_include_pad=False))[0, 0]


@pytest.mark.parametrize("shape", [(64, 64), (40, 36)])
def test_scattering_equals_kymatio(shape):
    from kymatio.torch import Scattering2D

    images = torch.rand((3,) + shape, generator=torch.Generator().manual_seed(1))
    ours = Scattering()(images)
    theirs = Scattering2D(J=2, shape=shape, L=8)(images)
    assert ours.shape == theirs.shape == (3, 81, shape[0] // 4, shape[1] // 4)
    # float32 FFTs in another order: 2e-7 here, up to 6e-6 seen on a fresh install
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5)


def test_kymatio_imports_with_a_scipy_that_lacks_sph_harm():
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(LIB)!r})
        import scipy.special
        original = scipy.special.sph_harm
        del scipy.special.sph_harm   # what scipy >= 1.17 looks like
        from MRISuperResLib.scattering import import_kymatio_filter_bank
        import_kymatio_filter_bank()
        import kymatio
        assert abs(scipy.special.sph_harm(1, 2, 0.3, 0.7) - original(1, 2, 0.3, 0.7)) < 1e-12
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_window_matching_finds_a_shifted_reference_and_swaps_its_sharp_features():
    scattering = Scattering()
    image = textured((64, 64))
    query = scattering(image[None])
    shifted = scattering(torch.roll(image, (8, -4), (0, 1))[None])  # 2 and -1 feature positions
    swapped, confidence, margin = match_window(query, shifted, shifted, radius=3)
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert torch.allclose(swapped[interior], query[interior], atol=1e-4)
    assert confidence[interior].min() > 0.99  # not 1: the roll wraps around, scattering pads by reflection
    unrelated = scattering(textured((64, 64), seed=5)[None])
    _, poor, poor_margin = match_window(query, unrelated, unrelated, radius=3)
    assert poor[interior].mean() < 0.8 * confidence[interior].mean()
    # The true match stands out of its window; a match in an unrelated image less so.
    assert margin[interior].mean() > 1.5 * poor_margin[interior].mean()


def test_calibrated_confidence_is_a_monotone_probability_and_keeps_background_at_zero():
    margins = torch.linspace(-0.5, 2.5, 301)
    for factor in (1.0, 2.0, 3.5, 4.0, 7.0):
        calibrated = calibrate_confidence(margins, factor)
        assert calibrated.min() >= 0 and calibrated.max() <= 1
        assert (calibrated.diff() >= -1e-7).all()
        assert (calibrated[margins <= 0] == 0).all()
    table = {2.0: ((0.1, 0.2), (0.3, 0.6)), 4.0: ((0.1, 0.0), (0.3, 0.2))}
    probe = torch.tensor([0.0, 0.05, 0.2, 0.9])
    assert calibrate_confidence(probe, 2.0, table).tolist() == pytest.approx([0, 0.2, 0.4, 0.6])
    assert calibrate_confidence(probe, 3.0, table).tolist() == pytest.approx([0, 0.1, 0.25, 0.4])
    assert calibrate_confidence(probe, 6.0, table).tolist() == pytest.approx([0, 0.0, 0.1, 0.2])


def test_bank_matching_in_chunks_equals_one_pass_and_finds_exact_patches():
    scattering = Scattering()
    features = scattering(torch.stack([textured((48, 48), seed) for seed in range(3)]))
    bank = build_bank([features], [features * 2], max_patches=10_000)
    one_pass = match_bank(features[:1], bank, memory_bytes=1 << 30)
    chunked = match_bank(features[:1], bank, memory_bytes=4 * bank.size * 7)  # 7 queries at a time
    # Chunking changes the order of float32 reductions (3.6e-7 seen on AMD EPYC), never which patch wins:
    # a wrong match would move features by the bank's value spread (order 1) and confidence by far more.
    torch.testing.assert_close(chunked[0], one_pass[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked[1], one_pass[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked[2], one_pass[2], rtol=0, atol=1e-5)
    # The query's own patches are in the bank: every match is exact, so the swapped features are the values.
    assert one_pass[1].min() > 0.999
    assert torch.allclose(one_pass[0], features[:1] * 2, atol=1e-4)


def test_bank_matching_memory_stays_within_its_bound():
    # 16384 queries × 16384 bank patches: a one-pass similarity matrix would take 1 GiB.
    script = textwrap.dedent(f"""
        import resource, sys; sys.path.insert(0, {str(LIB)!r})
        import torch
        torch.set_num_threads(1)
        from MRISuperResLib.texture import PatchBank, FeatureStatistics, match_bank
        c = 81
        query = torch.rand(4, c, 64, 64) + 0.1
        keys = torch.nn.functional.normalize(torch.randn(16384, 9 * c), dim=1)
        bank = PatchBank(keys, torch.rand(16384, 9 * c), FeatureStatistics(torch.zeros(c), torch.ones(c)))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        match_bank(query, bank, memory_bytes=32 << 20)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.split()[-1])
    # The bound: 32 MiB of similarities plus the matched patches (4 × 4096 × 729 floats = 48 MiB) and
    # the unfolded queries (48 MiB), with room for the allocator.
    assert growth < 300 * 2 ** 20, f"peak memory grew by {growth / 2 ** 20:.0f} MiB"


def test_upsampled_features_sit_on_the_pixels_they_describe():
    scattering = Scattering()
    height, width = 64, 56
    h, w = scattering(torch.zeros(1, height, width)).shape[-2:]
    spike = torch.zeros(1, 1, h, w)
    spike[0, 0, 5, 7] = 1.0
    image = upsample_features(spike, (height, width), scattering)[0, 0]
    top, left = scattering.leading_padding(height, width)
    assert divmod(int(image.argmax()), width) == (4 * 6 - top, 4 * 8 - left)


@pytest.mark.parametrize("architecture, arguments, lr_shape", [
    ("srcnn", {"features": 8, "mapped": 4, "reference_features": 4, "use_reference": True}, (2, 1, 24, 24)),
    # EDSR averages the texture onto its unshuffled grid; an odd side is padded as the slice is.
    ("edsr", {"features": 16, "blocks": 1, "context": 1, "use_reference": True}, (2, 3, 25, 30)),
])
def test_a_texture_network_starts_as_its_backbone(architecture, arguments, lr_shape):
    torch.manual_seed(0)
    backbone = build_architecture(architecture, arguments)
    textured_network = build_architecture(architecture, {**arguments, "texture_transfer": True})
    missing, unexpected = textured_network.load_state_dict(backbone.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("texture.") for key in missing)
    lr = torch.rand(*lr_shape)
    texture = torch.rand(lr_shape[0], 16, *lr_shape[2:])  # the projection placed on the pixels
    assert torch.allclose(textured_network(lr, texture=texture), backbone(lr), atol=1e-6)
    assert torch.allclose(textured_network(lr), backbone(lr), atol=1e-6)
    torch.nn.init.normal_(textured_network.texture.expand.weight, std=0.1)
    assert not torch.allclose(textured_network(lr, texture=texture), textured_network(lr), atol=1e-4)


def test_projecting_on_the_scattering_grid_equals_projecting_on_the_pixels():
    # The branch's reduction is a 1 × 1 convolution and placing is bilinear: they commute, so projecting
    # 82 channels before placing them gives what projecting them on the pixels would.
    scattering = Scattering()
    branch = build_architecture("edsr", {"features": 8, "blocks": 1, "texture_transfer": True}).texture
    quarter = torch.rand(1, 82, *scattering.output_shape(48, 40))
    # The gating (log, times the confidence) happens on the grid in both orders; what is moved is the
    # reduction: reduce(place(gated)) == place(reduce(gated)).
    gated = torch.cat([torch.log1p(100 * quarter[:, :-1]) * quarter[:, -1:], quarter[:, -1:]], 1)
    assert torch.allclose(upsample_features(branch.project(quarter), (48, 40), scattering),
                          branch.reduce(upsample_features(gated, (48, 40), scattering)), atol=1e-5)


def test_self_reference_needs_an_acquired_plane():
    assert acquired_planes((2,)) == [0]
    with pytest.raises(MRISuperResError, match="Self-reference needs an input plane"):
        acquired_planes((0, 1))


@pytest.mark.parametrize("mode", ["paired", "unpaired", "self"])
def test_every_reference_mode_runs_and_maps_its_confidence(texture_models_dir, mode):
    volume = smooth_volume(shape_kji=(10, 48, 44))
    original = volume.array.copy()
    reference = None if mode == "self" else smooth_volume(shape_kji=(40, 48, 44), spacing=(0.9, 0.9, 1.0))
    if mode == "unpaired":  # far away: an unpaired scan need not overlap the input
        reference = smooth_volume(shape_kji=(40, 48, 44), spacing=(0.9, 0.9, 1.0), origin=(500.0, 480.0, 520.0))
    # Untrained networks: without the self-check, which would fall back to cubic interpolation.
    result, confidence = superresolve_with_confidence(volume, reference, models_dir=str(texture_models_dir),
                                                      reference_mode=mode, threads=1, self_check=False)
    plain, _ = superresolve_with_confidence(volume, reference if mode == "paired" else None, self_check=False,
                                            models_dir=str(texture_models_dir), model="tiny", threads=1)
    assert result.grid.size == confidence.grid.size == plain.grid.size
    assert np.isfinite(result.array).all()
    assert 0.0 <= confidence.array.min() and confidence.array.max() <= 1.0 and confidence.array.max() > 0.3
    assert np.array_equal(volume.array, original)


def test_reference_modes_are_checked_before_running(texture_models_dir):
    volume = smooth_volume(shape_kji=(10, 48, 44))
    reference = smooth_volume(shape_kji=(40, 48, 44), spacing=(0.9, 0.9, 1.0))
    folder = str(texture_models_dir)
    cases = [
        ({"reference": None, "reference_mode": "paired"}, "needs a reference volume"),
        ({"reference": reference, "reference_mode": "self"}, "leave the reference out"),
        ({"reference": reference, "reference_mode": "unpaired", "model": "tiny"}, "does not do texture transfer"),
        ({"reference": None, "reference_mode": "self", "scale": (2, 2, 1)}, "Self-reference needs"),
        ({"reference": reference, "reference_mode": "sideways"}, "Unknown reference mode"),
    ]
    for arguments, message in cases:
        with pytest.raises(MRISuperResError, match=message):
            superresolve_with_confidence(volume, models_dir=folder, threads=1, **arguments)


def test_cli_writes_the_confidence_map_only_with_a_texture_model(cli, tmp_path, texture_models_dir):
    thick = tmp_path / "thick.nii.gz"
    write_volume(smooth_volume(shape_kji=(10, 48, 44)), thick)
    out, confidence = tmp_path / "sr.nii.gz", tmp_path / "confidence.nii.gz"
    code, stdout, _ = cli("run", str(thick), "-o", str(out), "--confidence", str(confidence), "--models-dir",
                          str(texture_models_dir), "--reference-mode", "self", "--threads", "1", "--quiet",
                          "--no-self-check")  # untrained: the self-check would fall back to cubic
    assert code == 0, stdout
    assert read_volume(confidence).grid.size == read_volume(out).grid.size
    out.unlink(), confidence.unlink()
    code, _, stderr = cli("run", str(thick), "-o", str(out), "--confidence", str(confidence), "--models-dir",
                          str(texture_models_dir), "--model", "tiny", "--quiet")
    assert code == 2 and "makes none; choose one of those" in stderr
    assert not out.exists() and not confidence.exists()


def test_texture_source_banks_are_built_once_per_blur():
    lr = np.asarray(textured((40, 48)).numpy()[None].repeat(12, 0))
    source = TextureSource.self_reference(lr, (2,), MatchSettings(bank_size=256, bank_slices=3))
    first = source.bank((4.0, 1.0))
    assert source.bank((4.0, 1.0)) is first and 0 < first.size <= 256
    texture, margin = source.features(lr[:2], (4.0, 1.0))
    assert texture.shape == (2, 82) + source.scattering.output_shape(40, 48)


def test_a_slice_stride_matches_the_middle_slice_of_each_run_and_shares_its_texture():
    slices = np.stack([textured((40, 48), seed=s).numpy() for s in range(6)])
    reference = np.stack([textured((40, 48), seed=10 + s).numpy() for s in range(6)])
    mask = np.ones_like(reference)
    source = TextureSource.paired()
    middles = [2, 5]
    alone = source.features(slices[middles], (4.0, 1.0), reference[middles], mask[middles])
    shared = source.features(slices, (4.0, 1.0), reference, mask, slice_stride=4)
    # Slices 0-3 take slice 2's texture, slices 4-5 slice 5's (the last of a shorter run).
    for index, served_by in enumerate((0, 0, 0, 0, 1, 1)):
        for matched, strided in zip(alone, shared):
            torch.testing.assert_close(strided[index], matched[served_by])
    assert not torch.allclose(alone[0][0], alone[0][1])  # the slices differ, so sharing is visible
