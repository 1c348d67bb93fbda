"""The module's log panel: every line a run logs (the child's output, progress, warnings) also goes to a
callable that appends it to the panel, so that "see the log" means something a GUI user can find."""

from __future__ import annotations

import logging

LOGGERS = ("MRISuperResLib", "MRISuperResSlicer", "MRISuperRes")


class PanelHandler(logging.Handler):
    def __init__(self, append, level=logging.INFO):
        super().__init__(level)
        self.append = append
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.append(self.format(record))
        except Exception:  # a closed panel must never break a run
            self.handleError(record)


def attach(append, level=logging.INFO) -> PanelHandler:
    """Send the module's log records at `level` and above to `append(line)`; returns the handler for detach."""
    handler = PanelHandler(append, level)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
    return handler


def detach(handler: PanelHandler) -> None:
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)
