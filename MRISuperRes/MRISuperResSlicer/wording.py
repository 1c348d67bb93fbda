"""The core's messages in the words of the module's GUI.

The core's one-sentence errors name command-line options ("pass --force", "use --device cpu"); a Slicer
user sees the same sentence with the widget to use instead, and a memory refusal becomes a question.
"""

from __future__ import annotations

import re

# plan.check_memory's advice; the refusal crosses the process boundary as text, so it is recognised by it.
MEMORY_REFUSAL = "pass --force to try anyway"
# (pattern, replacement), applied in order.
_GUI_WORDS = (
    (r",? or " + re.escape(MEMORY_REFUSAL) + r"\.", "."),
    (r"use --device cpu or auto", "choose 'cpu' or 'auto' in the Device selector (Advanced)"),
    (r"--target-spacing ([\d.]+)", r"a target spacing of \1 mm (Target resolution)"),
    (r"--no-adapt", "unticking 'Adapt to this scan'"),
    (r"--reference-mode", "the Reference mode selector"),
)


def in_gui_words(message: str) -> tuple[str, bool]:
    """(`message` with its command-line advice in GUI terms, whether it is a memory refusal that the user may
    override with "try anyway")."""
    text = message
    for pattern, replacement in _GUI_WORDS:
        text = re.sub(pattern, replacement, text)
    return text, MEMORY_REFUSAL in message
