"""A fit's checkpoint: its state after initialisation and every pass, in one atomic file.

The file is a ``.npz`` of plain arrays with JSON metadata and a content digest
(:mod:`distgmm._serialize`; never unpickled). It names the fit it belongs to by a
fingerprint of the configurations, the data's shape and chunking, and the seed's entropy,
so a checkpoint of another fit is refused instead of resumed. It may live at a URL
(``s3://...``; ``storage_options`` for fsspec), written in one PUT per pass.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from distgmm._atomic import file_exists
from distgmm._serialize import load_arrays, save_arrays

__all__ = ["FileCheckpoint"]

_KIND = "distgmm-checkpoint"
_VERSION = 2


class FileCheckpoint:
    """Atomic checkpoint file of a fit.

    Parameters
    ----------
    path : str or path
        File to write (local path or fsspec URL); replaced atomically, so a kill at any
        moment leaves the previous complete checkpoint.
    storage_options : dict, optional
        fsspec options for a URL.
    """

    def __init__(self, path: str | os.PathLike, storage_options: dict | None = None):
        self.path = os.fspath(path)
        self.storage_options = storage_options

    def save(self, arrays: dict[str, np.ndarray], state: dict[str, Any], fingerprint: str,
             entropy: Any) -> None:
        """Write ``arrays`` and the JSON-ready ``state`` of the fit named by ``fingerprint``."""
        meta = {"kind": _KIND, "version": _VERSION, "fingerprint": fingerprint,
                "entropy": str(entropy), **state}
        save_arrays(self.path, arrays, meta, self.storage_options)

    def load(self, fingerprint_of: Callable[[int], str]
             ) -> tuple[dict[str, np.ndarray], dict[str, Any], int] | None:
        """``(arrays, metadata, entropy)``, or None if there is no checkpoint yet.

        Raises
        ------
        ValueError
            The file is not a checkpoint of this version, or belongs to another fit
            (``fingerprint_of(entropy)`` differs from the one it was saved with).
        """
        if not file_exists(self.path, self.storage_options):
            return None
        arrays, meta, _ = load_arrays(self.path, self.storage_options)
        if meta.get("kind") != _KIND or meta.get("version") != _VERSION:
            raise ValueError(f"{self.path} is not a distgmm checkpoint of this version; remove "
                             "it or pick another checkpoint path.")
        entropy = int(meta["entropy"])
        if fingerprint_of(entropy) != meta["fingerprint"]:
            raise ValueError(
                f"checkpoint {self.path} was written by a different fit (other data, options "
                "or seed); rerun with the original options, or delete the checkpoint to start "
                "over."
            )
        return arrays, meta, entropy
