"""Exception types shared by every distgmm layer."""

from __future__ import annotations

__all__ = ["DistgmmInputError", "DistgmmRunError"]


class DistgmmInputError(ValueError):
    """Bad input from the user: a file, a store or an argument that cannot be used as given.

    The message is one line that names the problem, where it is (file, line, column or
    store path) and how to fix it. The CLI prints it as ``error: <message>`` and exits 2.
    """


class DistgmmRunError(RuntimeError):
    """A run that cannot go ahead now for a reason outside its input (another process holds
    the store it must write, ...).

    The message names the cause and what to do; the CLI prints it as ``error: <message>``
    and exits 1, so a scheduler retries or alerts rather than treating it as a usage error.
    """
