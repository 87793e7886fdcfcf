"""Exception types shared by every distgmm layer."""

from __future__ import annotations

__all__ = ["DistgmmInputError"]


class DistgmmInputError(ValueError):
    """Bad input from the user: a file, a store or an argument that cannot be used as given.

    The message is one line that names the problem, where it is (file, line, column or
    store path) and how to fix it. The CLI prints it as ``error: <message>`` and exits 2.
    """
