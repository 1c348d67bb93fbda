#!/usr/bin/env bash
# Set up, then super-resolve the built-in phantom: writes demo-output/ (volumes, before_after.png) and
# prints PSNR/SSIM of the default model against cubic interpolation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mrisuperres demo --output-dir demo-output "$@"
