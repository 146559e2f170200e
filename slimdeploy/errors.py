"""One exception type for everything the user can fix: the CLI prints it as one line and exits non-zero."""


class SlimdeployError(Exception):
    """A problem with the user's input or environment; the message says what was wrong and what to do."""

    exit_code = 1
