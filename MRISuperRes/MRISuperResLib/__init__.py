"""MRISuperRes core: slice-wise MRI super-resolution with optional reference contrast.

Pure Python (numpy, SimpleITK, torch); it never imports slicer, qt or vtk, so it runs in Slicer, in
scripts and behind the `mrisuperres` command alike. Names are loaded on first use, so that light parts
(the model list, plans, the child-process runner) import without torch or scipy: the Slicer GUI uses them
before those are installed.

>>> from MRISuperResLib import read_volume, superresolve, write_volume   # doctest: +SKIP
>>> thick = read_volume("t2_thick.nii.gz")                                # doctest: +SKIP
>>> sharp = superresolve(thick, reference=read_volume("t1.nii.gz"))      # doctest: +SKIP
>>> write_volume(sharp, "t2_sr.nii.gz")                                   # doctest: +SKIP
"""

import os
from importlib import import_module

# Apple's MPS backend lacks some operations; with this set PyTorch runs those on the CPU instead of failing.
# It has to be in the environment before torch starts, hence here, before any module of the package.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

__version__ = "0.1.0"
_EXPORTS = {
    "CancelledError": "errors", "MRISuperResError": "errors", "read_volume": "io", "write_volume": "io",
    "plan_run": "pipeline", "superresolve": "pipeline", "superresolve_with_confidence": "pipeline",
    "ProgressEvent": "progress", "Grid": "volume", "batch": "cohort",
    "Volume": "volume",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
