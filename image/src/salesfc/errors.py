"""Errors a user can cause and fix: the CLI prints them as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input or a missing prerequisite. The message names the input, what is wrong and what to do."""


class NotReady(UserError):
    """An input of this stage does not exist yet (waited for with --wait-timeout)."""
