"""The Slicer module's environment: the torch range per Python, packages found too old, and Cancel on Windows."""

from __future__ import annotations

import importlib.metadata

from MRISuperResSlicer import dependencies


def test_torch_is_pinned_below_the_version_reported_broken_in_slicer():
    for python in ((3, 9), (3, 12), (3, 13)):
        requirement = dependencies.torch_requirement(python)
        assert requirement.startswith(">=2.") and requirement.endswith(",<2.13")
    assert dependencies.torch_requirement((3, 12)) == ">=2.2,<2.13"  # the first torch with Python 3.12 wheels


def test_an_old_installed_package_is_named_with_its_version_and_offered_the_upgrade(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.2.1" if name == "kymatio" else real(name))
    monkeypatch.setattr(dependencies, "missing_packages", lambda: [])
    assert dependencies.outdated_packages() == {"kymatio": "0.2.1"}
    assert dependencies.needed_packages() == ["kymatio"]
    assert dependencies.describe_needed() == "kymatio (installed 0.2.1, too old: it will be upgraded)"


def test_nothing_is_needed_when_the_installed_versions_suffice(monkeypatch):
    monkeypatch.setattr(dependencies, "missing_packages", lambda: [])
    assert dependencies.outdated_packages() == {} and dependencies.needed_packages() == []


def test_cancel_on_windows_kills_the_tree_without_a_console_window(monkeypatch, tmp_path):
    import subprocess
    import sys

    from MRISuperResLib.job import RunOptions, SuperResolutionJob

    job = SuperResolutionJob(sys.executable, tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", None, RunOptions())
    job.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    calls = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: (calls.append((command, kwargs)),
                                                                       job.process.kill()))
    job.cancel()
    assert calls[0][0][:4] == ["taskkill", "/F", "/T", "/PID"] and calls[0][1]["creationflags"] == 0x08000000
    assert job.cancelled and not job.running


def test_saved_values_this_version_lacks_fall_back_to_the_defaults_with_one_sentence():
    from MRISuperResSlicer.parameters import fallback_message, stale_parameters

    values = {"model": "edsr-2030", "device": "mps", "targetMode": "isotropic"}
    choices = {"model": ("", "cubic", "edsr-large"), "device": ("auto", "cpu", "cuda"),
               "targetMode": ("isotropic", "scale", "spacing")}
    defaults = {"model": "edsr-large", "device": "auto", "targetMode": "isotropic"}
    replacements = stale_parameters(values, choices, defaults)
    assert replacements == {"model": "edsr-large", "device": "auto"}
    assert fallback_message(values, replacements) == (
        "The saved MRISuperRes settings come from another version: model 'edsr-2030' is not available here, "
        "using 'edsr-large'; device 'mps' is not available here, using 'auto'.")
    assert stale_parameters({"model": ""}, {"model": ("", "cubic")}, {"model": "cubic"}) == {}


def test_command_line_advice_is_given_in_the_guis_words():
    from MRISuperResLib.job import RunOptions
    from MRISuperResSlicer.wording import in_gui_words

    memory = ("This run needs about 9.1 GiB of memory but 4.0 GiB is available; ask for a coarser target spacing, "
              "or pass --force to try anyway.")
    text, refusal = in_gui_words(memory)
    assert refusal and "--force" not in text and text.endswith("ask for a coarser target spacing.")
    text, refusal = in_gui_words("CUDA was requested but no GPU is available to PyTorch; use --device cpu or auto.")
    assert not refusal and text.endswith("choose 'cpu' or 'auto' in the Device selector (Advanced).")
    assert "a target spacing of 0.9 mm (Target resolution)" in in_gui_words("super-resolve with --target-spacing 0.9 or")[0]
    assert RunOptions(force=True).arguments()[-1] == "--force" and "--force" not in RunOptions().arguments()
