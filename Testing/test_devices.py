"""Devices: what "auto" picks, how the installed PyTorch is described, and the advice shown on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import smooth_volume
from MRISuperResLib import MRISuperResError, devices, superresolve
from MRISuperResLib import plan as planning
from MRISuperResLib.advice import EXAMPLE_GRID, SLOW_SECONDS, device_advice
from MRISuperResLib.devices import PRECISION_VARIABLE, TorchBuild, installed_torch, resolve_device, uses_bfloat16
from MRISuperResLib.io import write_volume
from MRISuperResLib.models.registry import ModelRegistry
from MRISuperResLib.plan import (BFLOAT16_SPEEDUP, BFLOAT16_TRAINING_SPEEDUP, CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION,
                                 format_seconds, make_plan)
from MRISuperResLib.volume import Grid

MODULE_FOLDER = Path(__file__).resolve().parents[1] / "MRISuperRes"
CPU_ONLY = TorchBuild(version="2.12.0+cpu")
CUDA_NO_DRIVER = TorchBuild(version="2.12.0+cu121", cuda="12.1")
ONE_GPU = TorchBuild(version="2.12.0+cu121", cuda="12.1", gpus=("NVIDIA H200",))
MAC = TorchBuild(version="2.12.0", mps=True)


def test_auto_takes_cuda_then_mps_then_the_cpu():
    assert ONE_GPU.auto_device == "cuda"
    assert TorchBuild(version="2.12.0", cuda="12.1", gpus=("A", "B"), mps=True).auto_device == "cuda"
    assert MAC.auto_device == "mps"
    assert CPU_ONLY.auto_device == CUDA_NO_DRIVER.auto_device == "cpu"
    assert TorchBuild(version=None).auto_device == "cpu"


def test_each_build_is_described_in_one_sentence_with_its_version_and_device():
    assert ONE_GPU.describe() == "PyTorch 2.12.0+cu121 (built for CUDA 12.1) runs on NVIDIA H200 (CUDA)."
    assert "and 1 more" in TorchBuild(version="2.5", cuda="12.1", gpus=("A", "B")).describe()
    assert MAC.describe() == "PyTorch 2.12.0 (with Apple MPS) runs on the Mac's GPU (MPS)."
    assert CPU_ONLY.describe() == "PyTorch 2.12.0+cpu (a CPU-only build) runs on the CPU."
    assert TorchBuild(version="2.12.0+cpu", bfloat16=True).describe() == (
        "PyTorch 2.12.0+cpu (a CPU-only build) runs on the CPU, in bfloat16 (this CPU computes it natively; "
        "MRISUPERRES_PRECISION=float32 keeps float32).")
    # A CUDA build that sees no GPU is the case a user most needs told: the driver is the usual cause.
    assert "sees no GPU" in CUDA_NO_DRIVER.describe() and "driver" in CUDA_NO_DRIVER.describe()
    assert "not installed" in TorchBuild(version=None).describe()
    for build in (ONE_GPU, MAC, CPU_ONLY, CUDA_NO_DRIVER):
        assert build.describe().count(". ") == 0 and build.describe().endswith(".")


def test_a_run_in_another_process_is_planned_with_the_threads_it_will_use():
    import os
    import subprocess
    import sys

    assert TorchBuild(version="2.12.0", threads=3).cpu_threads == 3
    assert TorchBuild(version=None).cpu_threads == (os.cpu_count() or 1)
    # In a fresh process (as in Slicer's, which computes nothing with torch) the module plans with the count
    # a fresh child (the run) starts with; the module also passes it on with --threads.
    detected, default = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                        cwd=MODULE_FOLDER).stdout.strip() for code in (
        "from MRISuperResLib.devices import installed_torch; print(installed_torch().cpu_threads)",
        "import torch; print(torch.get_num_threads())"))
    assert int(detected) == int(default) >= 1


def test_asking_for_a_device_that_is_not_there_names_the_fix():
    build = installed_torch()
    if not build.gpus:
        with pytest.raises(MRISuperResError, match="use --device cpu or auto"):
            resolve_device("cuda")
    if not build.mps:
        with pytest.raises(MRISuperResError, match="MPS.*use --device cpu or auto"):
            resolve_device("mps")
    with pytest.raises(MRISuperResError, match="Unknown device 'tpu'; use one of auto, cpu, cuda, mps"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"


def test_the_registry_names_its_fast_model():
    registry = ModelRegistry()
    assert registry.fast_name in registry.cards and registry.fast_name != registry.default_name


def test_on_a_cpu_the_advice_gives_the_plans_times_for_the_default_and_the_fast_model():
    registry = ModelRegistry()
    grid = Grid((256, 256, 48), (0.9, 0.9, 4.0), (0.0, 0.0, 0.0))
    default = make_plan(grid, registry.default, has_reference=True, device="cpu", threads=2).seconds
    fast = make_plan(grid, registry.get(registry.fast_name), has_reference=True, device="cpu", threads=2,
                     adapt_seconds=0.0).seconds
    assert default > SLOW_SECONDS > fast  # else this test would not see the advice it checks
    text = device_advice(CPU_ONLY, registry, grid, has_reference=True, threads=2)
    assert text.startswith(CPU_ONLY.describe())
    assert f"the default {registry.default_name} takes about {format_seconds(default)}" in text
    assert f"the fast {registry.fast_name} with adaptation off about {format_seconds(fast)}" in text
    assert "on this scan" in text and "2 threads" in text
    # Without a scan the times are those of the benchmark volume.
    example = make_plan(EXAMPLE_GRID, registry.default, device="cpu", threads=2).seconds
    assert f"about {format_seconds(example)}" in device_advice(CPU_ONLY, registry, threads=2)


def test_devices_and_plan_give_a_scan_the_same_time(cli, tmp_path, monkeypatch):
    # A head in air: the networks skip the empty boxes, which `plan` counts; `devices` counted every pixel.
    volume = smooth_volume(shape_kji=(40, 256, 256), spacing=(0.9, 0.9, 4.0))
    k, j, i = np.indices(volume.array.shape)
    volume.array[(j - 128) ** 2 + (i - 128) ** 2 > 70 ** 2] = 0
    path = tmp_path / "head.nii.gz"
    write_volume(volume, path)
    monkeypatch.setattr(devices, "installed_torch", lambda: CPU_ONLY)
    code, out, _ = cli("plan", path, "--json", "--threads", "2")
    planned = json.loads(out)["seconds"]
    unmasked = make_plan(volume.grid, ModelRegistry().default, device="cpu", threads=2).seconds
    assert format_seconds(planned) != format_seconds(unmasked)  # else this test could not tell them apart
    code, out, _ = cli("devices", path, "--threads", "2")
    assert code == 0 and f"the default {ModelRegistry().default_name} takes about {format_seconds(planned)}" in out


def test_a_quick_default_or_a_gpu_gets_no_model_advice():
    registry = ModelRegistry()
    small = Grid((64, 64, 16), (0.9, 0.9, 4.0), (0.0, 0.0, 0.0))
    text = device_advice(CPU_ONLY, registry, small, threads=16)
    assert f"The default {registry.default_name} takes about" in text and registry.fast_name not in text
    assert device_advice(ONE_GPU, registry, small) == ONE_GPU.describe()
    assert device_advice(MAC, registry, small) == MAC.describe()
    # A target that cannot be planned leaves the advice to the build's sentence (the plan line says why).
    assert device_advice(CPU_ONLY, registry, small, target_spacing=(5.0, 5.0, 5.0)) == CPU_ONLY.describe()


def test_the_plan_counts_a_macs_gpu_between_a_cuda_gpu_and_the_cpu():
    registry = ModelRegistry()
    plans = {device: make_plan(EXAMPLE_GRID, registry.default, device=device, threads=2, adapt_seconds=0.0)
             for device in ("cuda", "mps", "cpu")}
    assert plans["cuda"].seconds < plans["mps"].seconds < plans["cpu"].seconds
    assert plans["mps"].one_line().endswith("on Apple GPU") and plans["cuda"].one_line().endswith("on GPU")


def test_the_devices_command_prints_the_build_and_exits_0(cli, thick_file):
    code, out, err = cli("devices", "--threads", "2")
    assert code == 0 and out.startswith(installed_torch().describe()), err
    code, out, err = cli("devices", thick_file, "--reference")
    assert code == 0 and "this scan" in out or installed_torch().auto_device != "cpu", (out, err)
    code, out, err = cli("devices", thick_file.parent / "missing.nii.gz")
    assert code != 0 and "missing.nii.gz" in err and out == ""


def test_bfloat16_runs_only_on_a_cpu_that_computes_it_and_float32_turns_it_off(monkeypatch):
    monkeypatch.setattr(devices, "cpu_computes_bfloat16", lambda: True)
    assert uses_bfloat16("cpu") and uses_bfloat16(torch.device("cpu"))
    assert not uses_bfloat16("cuda") and not uses_bfloat16("cuda:1") and not uses_bfloat16("mps")
    monkeypatch.setenv(PRECISION_VARIABLE, "float32")
    assert not uses_bfloat16("cpu")
    monkeypatch.setenv(PRECISION_VARIABLE, "auto")
    monkeypatch.setattr(devices, "cpu_computes_bfloat16", lambda: False)
    assert not uses_bfloat16("cpu")


def test_an_unknown_precision_is_refused_with_the_values_it_takes(monkeypatch):
    monkeypatch.setenv(PRECISION_VARIABLE, "half")
    with pytest.raises(MRISuperResError, match=f"{PRECISION_VARIABLE}=half is not a precision; set it to auto or float32"):
        uses_bfloat16("cpu")


def test_a_run_with_an_unknown_precision_exits_with_that_sentence_and_writes_nothing(monkeypatch, cli, thick_file):
    monkeypatch.setenv(PRECISION_VARIABLE, "fp16")
    output = thick_file.parent / "out.nii.gz"
    code, out, err = cli("run", thick_file, output, "--model", "vdsr-mixed")
    assert code != 0 and f"{PRECISION_VARIABLE}=fp16 is not a precision" in err and not output.exists()


def test_the_plan_counts_bfloat16s_speed_in_the_network_and_in_adaptation(monkeypatch):
    default = ModelRegistry().default
    plans = {}
    # Every CPU with bfloat16 instructions has AVX-512, where the float32 rates were measured.
    monkeypatch.setattr(planning, "cpu_vector_extension", lambda: "AVX512")
    for native in (False, True):
        monkeypatch.setattr(devices, "cpu_computes_bfloat16", lambda native=native: native)
        plans[native] = make_plan(EXAMPLE_GRID, default, device="cpu", threads=2, has_reference=True,
                                  adapt_seconds=20.0)
    # Both the network pass and each fine-tuning step get cheaper, so the same seconds (below the card's
    # ceiling on steps) hold more steps.
    assert plans[True].seconds < plans[False].seconds
    steps = plans[True].adapt_steps / plans[False].adapt_steps
    assert steps == pytest.approx(BFLOAT16_TRAINING_SPEEDUP[default.architecture], rel=0.05)
    assert BFLOAT16_SPEEDUP[default.architecture] > 1


def test_the_plan_counts_fewer_adaptation_steps_where_float32_training_is_slower(monkeypatch):
    registry = ModelRegistry()
    default, thin = registry.default, registry.get("vdsr-mixed")
    monkeypatch.setattr(devices, "cpu_computes_bfloat16", lambda: False)
    plans, gpu, thin_steps = {}, {}, {}
    for extension in ("AVX512", "AVX2"):
        monkeypatch.setattr(planning, "cpu_vector_extension", lambda extension=extension: extension)
        plans[extension] = make_plan(EXAMPLE_GRID, default, device="cpu", threads=2, has_reference=True,
                                     adapt_seconds=20.0)
        gpu[extension] = make_plan(EXAMPLE_GRID, default, device="cuda", threads=2, has_reference=True,
                                   adapt_seconds=1.0).adapt_steps
        thin_steps[extension] = make_plan(EXAMPLE_GRID, thin, device="cpu", threads=2, has_reference=True,
                                          adapt_seconds=20.0).adapt_steps
    # Below the card's ceilings, the same seconds hold fewer of the slower steps, with and without a reference...
    share = CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION["AVX2"][default.architecture]
    assert share < 1
    assert plans["AVX2"].adapt_steps / plans["AVX512"].adapt_steps == pytest.approx(share, rel=0.05)
    assert (plans["AVX2"].adapt_steps_without_reference / plans["AVX512"].adapt_steps_without_reference
            == pytest.approx(share, rel=0.05))
    # ... and the plan's time stays that budget: the network's rate is the same on both.
    assert plans["AVX2"].seconds == pytest.approx(plans["AVX512"].seconds, rel=0.02)
    # A GPU's steps do not depend on the CPU, nor do those of a thin network, which trains as fast on AVX2.
    assert gpu["AVX512"] == gpu["AVX2"]
    assert thin.architecture not in CPU_TRAINING_SHARE_BY_VECTOR_EXTENSION["AVX2"]
    assert thin_steps["AVX512"] == thin_steps["AVX2"]


def test_bfloat16_moves_a_runs_output_by_at_most_two_percent_of_its_range(monkeypatch):
    # On a CPU without bfloat16 instructions both runs are float32 and must agree exactly.
    volume = smooth_volume()
    outputs = {}
    for precision in ("float32", "auto"):
        monkeypatch.setenv(PRECISION_VARIABLE, precision)
        outputs[precision] = superresolve(volume, model="edsr-mixed", threads=1, self_check=False).array
    scale = float(np.ptp(outputs["float32"]))
    assert np.abs(outputs["auto"] - outputs["float32"]).max() <= 0.02 * scale
    if not devices.cpu_computes_bfloat16():
        assert np.array_equal(outputs["auto"], outputs["float32"])


@pytest.mark.parametrize("load, busy_now, user_policy, expected", [
    (9.0, 9.0, None, "PASSIVE"), (0.0, 0.0, None, None), (9.0, 9.0, "ACTIVE", "ACTIVE"),
    (9.0, None, None, "PASSIVE"), (0.0, None, None, None),  # no /proc/stat: the load average decides
    (9.0, 0.1, None, None),  # the load average of a command that just ended: the CPUs are idle now
    (0.0, 9.0, None, "PASSIVE"),  # one that just started: the load average has not risen yet
])
def test_a_command_started_on_a_busy_cpu_lets_its_waiting_threads_yield(load, busy_now, user_policy, expected):
    # A fresh process: OpenMP reads the policy when torch loads, so it is set before, and only then.
    probe = ("import os, json\n"
             f"os.getloadavg = lambda: ({load}, {load}, {load})\n"
             "from MRISuperResLib import devices\n"
             f"devices.busy_cpus_now = lambda: {busy_now}\n"
             "from MRISuperResLib.devices import wait_passively_when_the_cpu_is_busy\n"
             "first = wait_passively_when_the_cpu_is_busy()\n"
             "policy = os.environ.get('OMP_WAIT_POLICY')\n"
             "os.environ.pop('OMP_WAIT_POLICY', None)\n"
             "import torch\n"
             "late = wait_passively_when_the_cpu_is_busy()\n"
             "print(json.dumps([first, policy, late]))\n")
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_policy:
        environment["OMP_WAIT_POLICY"] = user_policy
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "MRISuperRes")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    first, policy, late = json.loads(result.stdout.strip().splitlines()[-1])
    assert policy == expected
    assert (first == (load if busy_now is None else busy_now)) == (expected == "PASSIVE" and user_policy is None)
    assert late is None  # once torch is loaded, changing the policy would be a no-op: nothing is set


def test_the_cpus_work_now_is_measured_where_the_os_tells_it():
    busy = devices.busy_cpus_now(0.05)
    if os.path.exists("/proc/stat"):
        assert 0 <= busy <= os.cpu_count()
    else:
        assert busy is None
