"""Errors that are the user's to fix: the CLI prints them in one line and exits with 2."""


class UserError(Exception):
    """Bad input: a config field, a file, an address. The message names it and its value."""

    exit_code = 2
