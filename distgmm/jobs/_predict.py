"""Predict for a small file without a store: read text/CSV/npy rows, label them in this process."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from distgmm._atomic import atomic_write, check_output_file
from distgmm.errors import DistgmmInputError
from distgmm._statistics import label_block
from distgmm.jobs._labeller import model_parameters
from distgmm.store import ModelFile, read_model
from distgmm.store._sources import open_source

__all__ = ["write_text", "Prediction", "predict_file", "write_prediction",
           "check_prediction_out"]


@dataclass(frozen=True)
class Prediction:
    """Labels (N,) int32 and, if asked, probabilities (N, K) float32 of a file's rows."""

    file: str
    model: str
    fingerprint: str
    labels: np.ndarray
    proba: np.ndarray | None

    @property
    def n_rows(self) -> int:
        """Rows read from the file."""
        return int(self.labels.shape[0])


def predict_file(model: str | os.PathLike | ModelFile, path: str, *, proba: bool = False,
                 format: str | None = None, columns: str | None = None,
                 header: bool | None = None) -> Prediction:
    """Label every row of a text, CSV or ``.npy`` file with a model file.

    The file is read block by block (the same readers as ``ingest``), so errors name the
    line and column; the feature count must match the model's.
    """
    loaded = model if isinstance(model, ModelFile) else read_model(model)
    source = open_source(path, format=format, columns=columns, header=header)
    source.nonfinite_hint = None  # predict has no option to skip rows
    d = loaded.model.n_features_in_
    if source.n_features != d:
        raise DistgmmInputError(
            f"{path} has {source.n_features} columns but model {loaded.path} was fitted on {d} "
            "features; select the right columns with --columns.")
    params = model_parameters(loaded.model)
    labels, probs = [], []
    for block, _ in source.blocks():
        lab, pro = label_block(params, block, proba)
        labels.append(lab)
        if proba:
            probs.append(pro)
    k = params.n_components
    all_labels = np.concatenate(labels) if labels else np.empty(0, np.int32)
    all_proba = (np.concatenate(probs) if probs else np.empty((0, k), np.float32)) \
        if proba else None
    return Prediction(file=path, model=loaded.path, fingerprint=loaded.fingerprint,
                      labels=all_labels, proba=all_proba)


def write_text(stream: Any, prediction: Prediction) -> None:
    """One line per row: the label, then (if computed) the probabilities as ``%.6g``."""
    if prediction.proba is None:
        np.savetxt(stream, prediction.labels, fmt="%d")
        return
    for label, row in zip(prediction.labels, prediction.proba):
        stream.write(f"{label} " + " ".join(f"{p:.6g}" for p in row) + "\n")


def check_prediction_out(out: str) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written, or an existing file that
    is not a prediction of the same kind (``.npy``: a NumPy file; else: text whose first
    line is numbers, as :func:`write_text` writes)."""
    if out.lower().endswith(".npy"):
        check_output_file(out, what="--out", kind="npy")
        return
    check_output_file(out, what="--out")
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        return
    with open(out, "rb") as handle:
        head = handle.read(4096)
    try:
        first = head.decode("utf-8").splitlines()[0].split()
        [float(cell) for cell in first]
    except (UnicodeDecodeError, ValueError, IndexError):
        raise DistgmmInputError(
            f"--out {out} exists and is not a prediction written by `distgmm predict` (its "
            "first line is not numbers); refusing to replace it. Choose another path or "
            "remove it yourself.") from None


def write_prediction(prediction: Prediction, out: str) -> str:
    """Write the prediction to ``out`` atomically.

    ``.npy``: the probabilities (N, K) if computed, else the labels (N,). Anything else:
    text, as :func:`write_text`.
    """
    data: Any = prediction.proba if prediction.proba is not None else prediction.labels
    with atomic_write(out) as f:
        if out.lower().endswith(".npy"):
            np.save(f, data)
        else:
            text = io.TextIOWrapper(f, encoding="utf-8")
            write_text(text, prediction)
            text.flush()
            text.detach()  # leave ``f`` open for atomic_write to fsync and close
    return out
