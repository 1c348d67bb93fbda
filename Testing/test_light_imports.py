"""What the Slicer GUI imports before torch and scipy are installed must not need them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "MRISuperRes"


def test_gui_side_imports_need_neither_torch_nor_scipy():
    probe = (
        "import sys\n"
        "import MRISuperResLib, MRISuperResLib.models.registry, MRISuperResLib.plan, MRISuperResLib.job\n"
        "import MRISuperResLib.io, MRISuperResSlicer.nodes, MRISuperResSlicer.runner, MRISuperResSlicer.dependencies\n"
        "import MRISuperResSlicer.sample_data, MRISuperResSlicer.views, MRISuperResSlicer.log_panel\n"
        "import MRISuperResLib.devices, MRISuperResLib.advice\n"
        "from MRISuperResLib.models.registry import ModelRegistry\n"
        "ModelRegistry().names()\n"
        "heavy = sorted(m for m in ('torch', 'scipy', 'tqdm') if m in sys.modules)\n"
        "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=MODULE_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_auto_device_is_what_torch_sees():
    import torch

    from MRISuperResLib.devices import installed_torch, resolve_device

    build = installed_torch()
    assert build.version == torch.__version__ and build.cuda == torch.version.cuda
    assert build.auto_device == resolve_device("auto").type
    assert build.auto_device == ("cuda" if torch.cuda.is_available() else "mps" if build.mps else "cpu")
