"""Choosing the torch device and thread count."""

from __future__ import annotations

import torch

from .errors import MRISuperResError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when there is a GPU, else the CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MRISuperResError("CUDA was requested but no GPU is available to PyTorch; use --device cpu or auto.")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise MRISuperResError(f"Unknown device '{name}'; use one of {', '.join(DEVICES)}.")


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise MRISuperResError(f"The thread count must be at least 1, not {threads}.")
        torch.set_num_threads(threads)
        # ITK (resampling, registration) would otherwise take every core whatever --threads says.
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
