"""Choosing the torch device and thread count, and saying what the installed PyTorch can run on.

torch is imported inside the functions, so that the device names and `installed_torch` serve the Slicer GUI
before PyTorch is installed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import time
from dataclasses import dataclass

from .errors import MRISuperResError

DEVICES = ("auto", "cpu", "cuda", "mps")
# `MRISUPERRES_PRECISION`: "auto" runs the networks under bfloat16 autocast on a CPU that computes bfloat16
# natively (`uses_bfloat16`), "float32" never does.
PRECISION_VARIABLE = "MRISUPERRES_PRECISION"
PRECISIONS = ("auto", "float32")


# OpenMP's worker threads (libgomp, in PyTorch's CPU builds) spin while they wait for work. With other processes
# keeping the CPU busy, spinning threads take turns with them and each parallel region waits for one that is
# not running: on a 2-core CPU with one busy process, fine-tuning steps of edsr-large took 3.2x their idle time
# and of vdsr-mixed 4.9x, and the fast model's run 2.1x; waiting passively, 2.0x, 1.8x and 1.4x. On an idle CPU
# passive waiting costs 14 %, 74 % and 10 % instead, so it is chosen only where the CPU is busy when a command
# starts (scripts/benchmark.py --adaptation-steps, README *Speed*), judged by what the CPUs do while this
# process waits `BUSY_SAMPLE_SECONDS`, or where the OS does not say (no /proc/stat) by the 1-minute load
# average. That average lags by a minute both ways: it counted a command that had just ended (consecutive runs
# on an idle machine waited passively) and missed one that had just started.
BUSY_LOAD_PER_CPU = 0.4
BUSY_SAMPLE_SECONDS = 0.2


def wait_passively_when_the_cpu_is_busy(environ=os.environ) -> float | None:
    """Set `OMP_WAIT_POLICY=PASSIVE` in `environ` when other processes keep at least `BUSY_LOAD_PER_CPU` per CPU
    busy (`busy_cpus_now`, else the 1-minute load average); returns that load when it did, else None. Leaves a
    policy the user set alone, and does nothing once torch is imported (OpenMP has read its settings by then)
    or where the OS tells neither."""
    if "OMP_WAIT_POLICY" in environ or "torch" in sys.modules:
        return None
    load = busy_cpus_now()
    if load is None and hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
    if load is None or load < BUSY_LOAD_PER_CPU * (os.cpu_count() or 1):
        return None
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return load


def busy_cpus_now(seconds: float = BUSY_SAMPLE_SECONDS) -> float | None:
    """How many CPUs' worth of work other processes do now (this one sleeps meanwhile), from /proc/stat over
    `seconds`; None where the OS has no /proc/stat."""
    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # all, idle + iowait
    try:
        total_before, idle_before = ticks()
        time.sleep(seconds)
        total_after, idle_after = ticks()
    except (OSError, ValueError, IndexError):
        return None
    total = total_after - total_before
    return (total - (idle_after - idle_before)) / total * (os.cpu_count() or 1) if total > 0 else None


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto"):
    """'auto' takes CUDA when there is an NVIDIA GPU, else Apple's MPS on a Mac that has it, else the CPU;
    asking for a device that is not there is an error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available(torch) else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MRISuperResError("CUDA was requested but no GPU is available to PyTorch; use --device cpu or auto.")
        return torch.device(name)
    if name == "mps":
        if not _mps_available(torch):
            raise MRISuperResError("Apple's MPS was requested but this PyTorch cannot use it (it needs a Mac with "
                                   "Apple silicon and macOS 12.3 or later); use --device cpu or auto.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise MRISuperResError(f"Unknown device '{name}'; use one of {', '.join(DEVICES)}.")


@functools.lru_cache(maxsize=1)
def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX). Without them PyTorch emulates
    bfloat16, which is slower than float32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, probe, lambda: False)())
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


@functools.lru_cache(maxsize=1)
def cpu_vector_extension() -> str:
    """The widest vector instructions PyTorch's CPU kernels use on this machine: "AVX512", "AVX2", or another
    name PyTorch gives ("DEFAULT" where it uses none of those; "unknown" from a PyTorch too old to say)."""
    import torch

    probe = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return probe() if probe is not None else "unknown"


def uses_bfloat16(device) -> bool:
    """Whether the networks run under bfloat16 autocast on `device` (a name or a torch.device).

    Only on a CPU that computes bfloat16 natively. There, measured on 2-core AMD EPYC with AVX-512 BF16
    (one thread, `plan.BFLOAT16_SPEEDUP`), edsr-large's forward pass takes 0.45× the float32 time and its
    fine-tuning step 0.55×. On val/ PSNR moved by at most 0.003 dB (README, *How it works*, Precision).
    GPUs stay in float32: their runs already take seconds, and bfloat16 there is not measured."""
    precision = os.environ.get(PRECISION_VARIABLE, "auto")
    if precision not in PRECISIONS:
        raise MRISuperResError(f"{PRECISION_VARIABLE}={precision} is not a precision; set it to "
                               f"{' or '.join(PRECISIONS)}, or unset it.")
    if precision == "float32" or str(device).split(":")[0] != "cpu" or importlib.util.find_spec("torch") is None:
        return False
    return cpu_computes_bfloat16()


def autocast(device):
    """The context the networks run in on `device`: bfloat16 autocast where `uses_bfloat16`, else a no-op."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bfloat16(device))


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise MRISuperResError(f"The thread count must be at least 1, not {threads}.")
        import torch

        torch.set_num_threads(threads)
        # ITK (resampling, registration) would otherwise take every core whatever --threads says.
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


@dataclass(frozen=True)
class TorchBuild:
    """The installed PyTorch as far as devices go: `version` None when torch is not installed; `cuda` the CUDA
    version the build was made for (None: a CPU-only or macOS build); `gpus` the CUDA GPUs it sees."""

    version: str | None
    cuda: str | None = None
    gpus: tuple[str, ...] = ()
    mps: bool = False
    # The CPU threads a run started now would use (torch's default: the physical cores, or OMP_NUM_THREADS);
    # 0 when torch is not installed. Callers that start a run in another process plan with it and pass it on.
    threads: int = 0
    # Whether the CPU computes bfloat16 natively, so CPU runs use it (`uses_bfloat16`).
    bfloat16: bool = False

    @property
    def cpu_threads(self) -> int:
        """The thread count to plan a CPU run with: torch's own default, else the CPUs the OS reports."""
        return self.threads or os.cpu_count() or 1

    @property
    def auto_device(self) -> str:
        """The device that "auto" runs on."""
        return "cuda" if self.gpus else "mps" if self.mps else "cpu"

    def describe(self) -> str:
        """One sentence: the build and the device "auto" will use, e.g. 'PyTorch 2.5.1+cu121 (built for CUDA 12.1)
        runs on NVIDIA H100 (CUDA).'"""
        if self.version is None:
            return ("PyTorch is not installed yet; the first run installs it, with CUDA where there is an NVIDIA GPU.")
        build = f"built for CUDA {self.cuda}" if self.cuda else "a CPU-only build" if not self.mps else "with Apple MPS"
        head = f"PyTorch {self.version} ({build})"
        if self.gpus:
            more = f" and {len(self.gpus) - 1} more" if len(self.gpus) > 1 else ""
            return f"{head} runs on {self.gpus[0]}{more} (CUDA)."
        if self.mps:
            return f"{head} runs on the Mac's GPU (MPS)."
        if self.cuda:
            return (f"{head} sees no GPU (no NVIDIA driver, or one older than CUDA {self.cuda} needs), "
                    "so it runs on the CPU.")
        if self.bfloat16:
            return (f"{head} runs on the CPU, in bfloat16 (this CPU computes it natively; "
                    f"{PRECISION_VARIABLE}=float32 keeps float32).")
        return f"{head} runs on the CPU."


@functools.lru_cache(maxsize=1)
def installed_torch() -> TorchBuild:
    """What the installed PyTorch can run on (torch is imported only when it is installed, and once)."""
    if importlib.util.find_spec("torch") is None:
        return TorchBuild(version=None)
    import torch

    gpus = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) \
        if torch.cuda.is_available() else ()
    return TorchBuild(version=torch.__version__, cuda=torch.version.cuda, gpus=gpus, mps=_mps_available(torch),
                      threads=torch.get_num_threads(), bfloat16=not gpus and uses_bfloat16("cpu"))
