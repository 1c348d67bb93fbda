"""Lets the scripts import MRISuperResLib from the checkout without installing it."""

import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "MRISuperRes"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
