"""Side-by-side PNG panels of 2D slices: matplotlib when installed (titled panels), else SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def save_panels(panels: list[tuple[str, np.ndarray]], path: str | Path, window: tuple[float, float]) -> Path:
    """Write the 2D `panels` (title, image with rows from top) in one row, all with the same `window`."""
    path = Path(path)
    low, high = window
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        strip = np.concatenate([np.clip((image - low) / (high - low), 0, 1) for _, image in panels], axis=1)
        sitk.WriteImage(sitk.GetImageFromArray((255 * strip).astype(np.uint8)), str(path))
        return path
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), dpi=110)
    for axis, (title, image) in zip(np.atleast_1d(axes), panels):
        axis.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
