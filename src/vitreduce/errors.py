"""The one exception type for mistakes a user can fix; the CLI prints its message without a traceback."""


class VitreduceError(ValueError):
    """Bad input or state that the user can correct; the message says what to change."""
