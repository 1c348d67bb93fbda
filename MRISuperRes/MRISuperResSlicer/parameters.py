"""Saved GUI state from another version: values this version does not offer fall back to the default.

A scene saved by another MRISuperRes can hold a model name that is not installed here, or a device or target
mode this version lacks. The module replaces each with its default and says so once, instead of failing in
the middle of updating the GUI.
"""

from __future__ import annotations


def stale_parameters(values: dict[str, str], choices: dict[str, tuple[str, ...]],
                     defaults: dict[str, str]) -> dict[str, str]:
    """Parameter name → default, for each value in `values` that is not among its `choices`."""
    return {name: defaults[name] for name, value in values.items() if value not in choices[name]}


def fallback_message(values: dict[str, str], replacements: dict[str, str]) -> str:
    """One sentence naming each stale value and what replaced it."""
    changes = "; ".join(f"{name} '{values[name]}' is not available here, using '{replacement or 'automatic'}'"
                        for name, replacement in replacements.items())
    return f"The saved MRISuperRes settings come from another version: {changes}."
