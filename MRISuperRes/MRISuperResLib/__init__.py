"""MRISuperRes core: slice-wise MRI super-resolution with optional reference contrast.

Pure Python (numpy, SimpleITK, torch); it never imports slicer, qt or vtk, so it runs in Slicer, in
scripts and behind the `mrisuperres` command alike.

>>> from MRISuperResLib import read_volume, superresolve, write_volume   # doctest: +SKIP
>>> thick = read_volume("t2_thick.nii.gz")                                # doctest: +SKIP
>>> sharp = superresolve(thick, reference=read_volume("t1.nii.gz"))      # doctest: +SKIP
>>> write_volume(sharp, "t2_sr.nii.gz")                                   # doctest: +SKIP
"""

from .errors import CancelledError, MRISuperResError
from .io import read_volume, write_volume
from .pipeline import plan_run, superresolve
from .progress import ProgressEvent
from .volume import Grid, Volume

__all__ = ["CancelledError", "MRISuperResError", "read_volume", "write_volume", "plan_run", "superresolve",
           "ProgressEvent", "Grid", "Volume"]
__version__ = "0.1.0"
