"""The Python packages the core needs inside Slicer, and installing them on first use, after asking.

torch comes through the PyTorch extension (`PyTorchUtils`), which picks the build for the machine's GPU;
scipy, tqdm and kymatio through `slicer.util.pip_install`. Slicer's own numpy, SimpleITK and VTK are never
reinstalled. Nothing is installed at import time.
"""

from __future__ import annotations

import functools
import importlib.util

# Import name → pip requirement. scipy below 1.17: kymatio 0.3.0 (texture transfer) imports sph_harm, which
# scipy 1.17 removed (MRISuperResLib.scattering also puts it back, for a Slicer that already has a newer scipy).
PIP_PACKAGES = {"scipy": "scipy>=1.10,<1.17", "tqdm": "tqdm>=4.60", "kymatio": "kymatio==0.3.0"}
TORCH_REQUIREMENT = ">=2.1"


def missing_packages() -> list[str]:
    """Import names of the packages the core needs that this Python cannot import."""
    return [name for name in ("torch", *PIP_PACKAGES) if importlib.util.find_spec(name) is None]


def install_missing(ask_confirmation: bool = True) -> bool:
    """Install what is missing (Slicer only); False when the user declined or PyTorch is unavailable."""
    import slicer

    missing = missing_packages()
    if not missing:
        return True
    if slicer.app.testingEnabled():
        return False  # tests never install: on build machines the confirmation below would answer yes itself
    if ask_confirmation and not slicer.util.confirmOkCancelDisplay(
            "MRISuperRes needs these Python packages, which will now be downloaded and installed: "
            + ", ".join(missing) + ". This can take several minutes.", "MRISuperRes: install dependencies"):
        return False
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("MRISuperRes needs the PyTorch extension; install it from the Extensions Manager "
                               "and restart Slicer.") from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                          torchVersionRequirement=TORCH_REQUIREMENT) is None:
            return False
    requirements = [PIP_PACKAGES[name] for name in missing if name in PIP_PACKAGES]
    if requirements:
        slicer.util.pip_install(requirements)
    return not missing_packages()


@functools.lru_cache(maxsize=1)
def auto_device() -> str:
    """What the device choice "auto" will run on: CUDA when the installed torch sees a GPU, else the CPU
    (torch is imported only when it is installed, and once)."""
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
