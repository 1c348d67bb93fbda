"""Pathology is kept, and none is invented (issue 11), on the phantom with the default model (as
`--no-self-check` runs it: the network, the projection onto the acquired slices and the ball fit of small
lesions): lesions of 3-10 mm in 4x thick T2 slices keep their contrast against the surrounding white matter
within 10 % and their size within 25 %, never less contrast than cubic interpolation keeps; a lesion present
only in the reference moves the output there by less than the noise level."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MRISuperResLib import Volume, superresolve
from MRISuperResLib.degrade import thick_slices
from MRISuperResLib.phantom import (LESION, T1_INTENSITY, T2_INTENSITY, WM, phantom_contrast, phantom_labels,
                                    place_lesions)

SHAPE = (80, 128, 112)
DIAMETERS = (3, 5, 7, 10)
NOISE = 10.0  # the phantom's Rician noise: 1 % of its 1000 scale


@pytest.fixture(scope="module")
def head():
    labels = phantom_labels(SHAPE, seed=3)
    labels[labels == LESION] = WM  # only the lesions placed here
    labels, lesions = place_lesions(labels, DIAMETERS)
    contrast = lambda table, seed, lab=labels: Volume(phantom_contrast(lab, table, seed), (1.0, 1.0, 1.0))  # noqa: E731
    truth, reference = contrast(T2_INTENSITY, 3), contrast(T1_INTENSITY, 4)
    return labels, lesions, truth, reference, thick_slices(truth, axis=2, factor=4), contrast


def surrounding_ring(lesion, labels):
    return ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion, iterations=1) & (labels == WM)


def contrast_ratio(image, lesion, labels):
    ring = surrounding_ring(lesion, labels)
    return image[lesion].mean() / image[ring].mean()


def lesion_size(image, lesion, labels, truth):
    """Voxels of the lesion and 3 voxels around it above half-way between the truth's lesion and ring means."""
    level = (truth[lesion].mean() + truth[surrounding_ring(lesion, labels)].mean()) / 2
    return int((image[ndimage.binary_dilation(lesion, iterations=3)] > level).sum())


def test_lesions_keep_their_contrast(head):
    labels, lesions, truth, reference, thick, _ = head
    cubic = superresolve(thick, model="cubic", target_spacing=truth.spacing).array
    alone = superresolve(thick, target_spacing=truth.spacing, self_check=False).array
    guided = superresolve(thick, reference, target_spacing=truth.spacing, self_check=False).array
    for diameter, lesion in zip(DIAMETERS, lesions):
        expected = contrast_ratio(truth.array, lesion, labels)
        kept = {name: contrast_ratio(image, lesion, labels) / expected - 1
                for name, image in (("cubic", cubic), ("alone", alone), ("guided", guided))}
        # Never more contrast lost than interpolation loses, nor contrast invented.
        assert kept["alone"] >= kept["cubic"] - 0.02 and kept["guided"] >= kept["cubic"] - 0.02, (diameter, kept)
        # Within 10 % of the truth's, with and without the reference. A lesion thinner than a 4 mm slab is
        # averaged with its surround there (cubic keeps 71 % of the 3 mm one's contrast); the slabs it shows in
        # and its in-plane size give it back as a ball (`round_lesions`; the network alone kept 76 % without
        # the reference, 89 % with it).
        assert abs(kept["alone"]) <= 0.1 and abs(kept["guided"]) <= 0.1, (diameter, kept)
        # And its size: the voxels above the truth's half-contrast level (cubic: -40 % at 3 mm; measured
        # +15 / +8 / -8 / -5 % without the reference).
        true_size = lesion_size(truth.array, lesion, labels, truth.array)
        sizes = {name: lesion_size(image, lesion, labels, truth.array) / true_size - 1
                 for name, image in (("alone", alone), ("guided", guided))}
        assert all(abs(change) <= 0.25 for change in sizes.values()), (diameter, sizes)


def test_without_the_ball_fit_a_3_mm_lesion_stays_spread(head):
    labels, lesions, truth, _, thick, _ = head
    spread = superresolve(thick, target_spacing=truth.spacing, self_check=False, round_lesions=False).array
    expected = contrast_ratio(truth.array, lesions[0], labels)
    assert contrast_ratio(spread, lesions[0], labels) / expected - 1 < -0.15


def test_a_lesion_only_in_the_reference_does_not_appear(head):
    labels, lesions, truth, reference, thick, contrast = head
    with_lesion, (ball,) = place_lesions(labels, (7,))
    reference_with_lesion = contrast(T1_INTENSITY, 4, with_lesion)
    assert (reference.array - reference_with_lesion.array)[ball].mean() > 300  # plain in the reference
    plain = superresolve(thick, reference, target_spacing=truth.spacing, self_check=False).array
    shown = superresolve(thick, reference_with_lesion, target_spacing=truth.spacing, self_check=False).array
    # Measured 5.1 units with edsr-large (0.5 noise sigma; 6.8 without the consistency step, edsr-mixed gave
    # 15): at most the noise level.
    invented = abs((shown - plain)[ball].mean())
    assert invented <= NOISE, invented
    real_lesion = (T2_INTENSITY[LESION] - T2_INTENSITY[WM]) * 1000
    assert invented <= 0.05 * real_lesion
