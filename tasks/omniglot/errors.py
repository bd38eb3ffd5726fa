"""The one error type for bad Omniglot input.

Every problem the user can fix (a missing or corrupt archive, a wrong layout, an unknown
alphabet, an episode the data cannot fill, a malformed runs folder) raises it, so the CLI
can print the message and exit with 2 instead of showing a traceback.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """Bad dataset input; the message names what was expected and where."""
