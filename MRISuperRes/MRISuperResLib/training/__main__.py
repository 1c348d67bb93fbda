"""`python -m MRISuperResLib.training CONFIG ...`: `mrisuperres train` in a form `torchrun` can start."""

import argparse
import sys

from ..cli import add_training_arguments
from ..errors import MRISuperResError
from . import train_from_arguments

parser = argparse.ArgumentParser(prog="python -m MRISuperResLib.training", description=__doc__)
add_training_arguments(parser)
try:
    train_from_arguments(parser.parse_args())
except MRISuperResError as error:
    print(f"mrisuperres train: error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)
