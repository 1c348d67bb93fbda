"""The Python packages the core needs inside Slicer, and installing them on first use, after asking.

torch comes through the PyTorch extension (`PyTorchUtils`), which picks the build for the machine's GPU;
scipy, tqdm and kymatio through `slicer.util.pip_install`. Slicer's own numpy, SimpleITK and VTK are never
reinstalled. Nothing is installed at import time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys

# Import name → pip requirement. scipy below 1.17: kymatio 0.3.0 (texture transfer) imports sph_harm, which
# scipy 1.17 removed (MRISuperResLib.scattering also puts it back, for a Slicer that already has a newer scipy).
PIP_PACKAGES = {"scipy": "scipy>=1.10,<1.17", "tqdm": "tqdm>=4.60", "kymatio": "kymatio==0.3.0"}
# The oldest versions the core works with: torch for `torch.load(weights_only=True)` with the tensors our
# weights hold and the channels_last/bfloat16 paths (2.1); kymatio for the filter bank texture transfer uses.
MINIMUM_VERSIONS = {"torch": (2, 1), "kymatio": (0, 3)}


def torch_requirement(python: tuple[int, int] = sys.version_info[:2]) -> str:
    """The torch versions to install for the Python that Slicer runs: from the minimum the core needs (the
    first with wheels for Python 3.12 there, as in Slicer 5.10 and later), below 2.13, reported broken inside
    Slicer 5.12 (light-the-torch issue 176)."""
    return ">=2.2,<2.13" if python >= (3, 12) else ">=2.1,<2.13"


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def missing_packages() -> list[str]:
    """Import names of the packages the core needs that this Python cannot import."""
    return [name for name in ("torch", *PIP_PACKAGES) if importlib.util.find_spec(name) is None]


def outdated_packages() -> dict[str, str]:
    """Installed packages older than the core needs: import name → installed version."""
    outdated = {}
    for name, minimum in MINIMUM_VERSIONS.items():
        if importlib.util.find_spec(name) is None:
            continue  # missing, not outdated
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if _major_minor(version) < minimum:
            outdated[name] = version
    return outdated


def needed_packages() -> list[str]:
    """What an installation must bring: the missing packages and those too old."""
    return missing_packages() + list(outdated_packages())  # outdated ones are importable, so not missing


def describe_needed() -> str:
    """One line for the confirmation: each package, and for an old one the version found and the upgrade."""
    outdated = outdated_packages()
    return ", ".join(f"{name} (installed {outdated[name]}, too old: it will be upgraded)" if name in outdated
                     else name for name in needed_packages())


def install_missing(ask_confirmation: bool = True) -> bool:
    """Install what is missing (Slicer only); False when the user declined or PyTorch is unavailable."""
    import slicer

    missing = needed_packages()
    if not missing:
        return True
    if slicer.app.testingEnabled():
        return False  # tests never install: on build machines the confirmation below would answer yes itself
    if ask_confirmation and not slicer.util.confirmOkCancelDisplay(
            "MRISuperRes needs these Python packages, which will now be downloaded and installed: "
            + describe_needed() + ". This can take several minutes.", "MRISuperRes: install dependencies"):
        return False
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("MRISuperRes needs the PyTorch extension; install it from the Extensions Manager "
                               "and restart Slicer.") from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                          torchVersionRequirement=torch_requirement()) is None:
            return False
    requirements = [PIP_PACKAGES[name] for name in missing if name in PIP_PACKAGES]
    if requirements:
        slicer.util.pip_install(["--upgrade", *requirements])
    return not needed_packages()
