"""The one base of every error autoprune raises about its input.

An :class:`AutopruneError` means the user can fix something (a study file, a path, an
argument, a run directory) and its message says what; the command line prints the message
alone. Any other exception is a bug and keeps its traceback. This module imports nothing,
so every layer of the package can use it.
"""


class AutopruneError(Exception):
    """Bad input or an unusable run; the message names the file, key or argument at fault."""
