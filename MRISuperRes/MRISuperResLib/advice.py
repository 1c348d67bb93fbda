"""Advice on the device: what the installed PyTorch runs on and, where that is only a CPU, how long the
default and the fast model take on the scan at hand, so that a user can choose before waiting.

Shown by `mrisuperres devices` and below the Slicer module's device selector. Light: torch is imported only
to ask what it sees (`devices.installed_torch`), and the times come from the plan, not from running.
"""

from __future__ import annotations

from .devices import TorchBuild
from .errors import MRISuperResError
from .models.registry import ModelRegistry
from .plan import Plan, make_plan
from .volume import Grid

# The benchmark volume (scripts/benchmark.py): what the times refer to when there is no scan yet.
EXAMPLE_GRID = Grid((256, 256, 64), (0.9, 0.9, 3.6), (0.0, 0.0, 0.0))
# Below this the default is quick enough on a CPU that suggesting another model would only cost quality.
SLOW_SECONDS = 60.0


def device_advice(build: TorchBuild, registry: ModelRegistry, grid: Grid | None = None, *,
                  has_reference: bool = False, threads: int = 1, adapt_seconds: float | None = None,
                  signal_shares: dict[int, float] | None = None, **target) -> str:
    """The build's sentence, and on a CPU the default's and the fast model's estimated time on `grid` (the
    benchmark volume when None) with the same target and reference; `target`: target_spacing or scale;
    `signal_shares`: the scan's (`foreground.scan_signal_shares`), as `mrisuperres plan` counts them."""
    text = build.describe()
    if build.auto_device != "cpu" or build.version is None:
        return text
    scan = "this scan" if grid is not None else "a 256 × 256 × 64 scan of 4× thick slices"
    try:
        target = {**target, "signal_shares": signal_shares}
        default = _seconds(registry, registry.default_name, grid or EXAMPLE_GRID, has_reference, threads,
                           adapt_seconds, target)
        if default.seconds < SLOW_SECONDS or registry.fast_name is None:
            return f"{text} The default {registry.default_name} takes {default.time_phrase()} on {scan}."
        # The fastest choice a user has: the fast model with adaptation off.
        fast = _seconds(registry, registry.fast_name, grid or EXAMPLE_GRID, has_reference, threads, 0.0, target)
    except MRISuperResError:
        return text  # no valid target yet: the plan line says why
    return (f"{text} Only a CPU ({threads} thread{'s' if threads != 1 else ''}): on {scan} the default "
            f"{registry.default_name} takes {default.time_phrase()}, the fast {registry.fast_name} with "
            f"adaptation off {fast.time_phrase()} (less sharp); an NVIDIA GPU takes seconds.")


def _seconds(registry: ModelRegistry, name: str, grid: Grid, has_reference: bool, threads: int,
             adapt_seconds: float | None, target: dict) -> Plan:
    extra = {} if adapt_seconds is None else {"adapt_seconds": adapt_seconds}
    return make_plan(grid, registry.get(name), has_reference=has_reference, device="cpu", threads=threads,
                     **extra, **target)
