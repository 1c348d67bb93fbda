"""The exceptions every entry point turns into one clear sentence and a non-zero exit."""


class MRISuperResError(Exception):
    """Bad input or a failed precondition; the message names the problem and the fix in one sentence."""

    exit_code = 2


class CancelledError(MRISuperResError):
    """The user asked to stop; nothing was written."""

    exit_code = 130

    def __init__(self, message: str = "Cancelled by the user; no output was written.") -> None:
        super().__init__(message)
