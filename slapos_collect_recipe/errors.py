"""The one exception type that reaches the user as a single line on stderr."""


class CollectError(Exception):
    """Bad input or an environment problem the user can fix.

    The CLI prints ``slapos-collect <command>: error: <message>`` and exits
    with ``exit_code``; no traceback is shown.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
