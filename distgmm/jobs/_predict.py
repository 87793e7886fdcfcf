"""Predict for a small source without a store: read its rows (any ingest source), label them in this process.

Outputs (``--out``): ``.csv`` and ``.parquet`` are tables with a header (``row`` or, with
an id column, ``id``; ``label``; ``proba_0``...), as ``distgmm export`` writes them;
``.npy`` the labels (or the probabilities); anything else (and stdout) one line per row,
the label then the probabilities.
"""

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
    ids: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """Rows read from the file."""
        return int(self.labels.shape[0])


def predict_file(model: str | os.PathLike | ModelFile, path: str, *, proba: bool = False,
                 format: str | None = None, columns: str | None = None,
                 header: bool | None = None, id_column: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> Prediction:
    """Label every row of a source (CSV, Parquet, Zarr, npy, text) with a model file.

    The source is read block by block (the same readers as ``ingest``), so errors name the
    row and column; the feature count must match the model's. ``id_column`` keeps a CSV or
    Parquet key column beside the labels.
    """
    loaded = model if isinstance(model, ModelFile) else read_model(model, storage_options)
    source = open_source(path, format=format, columns=columns, header=header,
                         id_column=id_column, storage_options=storage_options)
    source.nonfinite_hint = None  # predict has no option to skip rows
    d = loaded.model.n_features_in_
    if source.n_features != d:
        raise DistgmmInputError(
            f"{path} has {source.n_features} columns but model {loaded.path} was fitted on {d} "
            "features; select the right columns with --columns.")
    params = model_parameters(loaded.model)
    labels, probs, ids = [], [], []
    for block, keys in source.blocks():
        lab, pro = label_block(params, block, proba)
        labels.append(lab)
        ids.append(keys)
        if proba:
            probs.append(pro)
    k = params.n_components
    all_labels = np.concatenate(labels) if labels else np.empty(0, np.int32)
    all_proba = (np.concatenate(probs) if probs else np.empty((0, k), np.float32)) \
        if proba else None
    return Prediction(file=path, model=loaded.path, fingerprint=loaded.fingerprint,
                      labels=all_labels, proba=all_proba,
                      ids=np.concatenate(ids) if id_column is not None and ids else None)


def write_text(stream: Any, prediction: Prediction) -> None:
    """One line per row: the label, then (if computed) the probabilities as ``%.6g``."""
    if prediction.proba is None:
        np.savetxt(stream, prediction.labels, fmt="%d")
        return
    for label, row in zip(prediction.labels, prediction.proba):
        stream.write(f"{label} " + " ".join(f"{p:.6g}" for p in row) + "\n")


def _table_format(out: str) -> str | None:
    lower = out.lower()
    return "csv" if lower.endswith(".csv") else "parquet" if lower.endswith(
        (".parquet", ".pq")) else None


def check_prediction_out(out: str) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written, or an existing file that
    is not a prediction of the same kind (``.npy``: a NumPy file; ``.csv``/``.parquet``: a
    table as export writes; else: text whose first line is numbers, as :func:`write_text`
    writes)."""
    if out.lower().endswith(".npy"):
        check_output_file(out, what="--out", kind="npy")
        return
    check_output_file(out, what="--out")
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        return
    with open(out, "rb") as handle:
        head = handle.read(4096)
    fmt = _table_format(out)
    if fmt == "parquet" and head[:4] == b"PAR1" or fmt == "csv" and head.startswith(
            (b'"row"', b'"id"')):
        return
    try:
        if fmt is not None:
            raise ValueError("not an earlier table")
        first = head.decode("utf-8").splitlines()[0].split()
        [float(cell) for cell in first]
    except (UnicodeDecodeError, ValueError, IndexError):
        raise DistgmmInputError(
            f"--out {out} exists and is not a prediction written by `distgmm predict` (its "
            "first line is not numbers); refusing to replace it. Choose another path or "
            "remove it yourself.") from None


def write_prediction(prediction: Prediction, out: str) -> str:
    """Write the prediction to ``out`` atomically.

    ``.csv``/``.parquet``: a table with a header (module docstring). ``.npy``: the
    probabilities (N, K) if computed, else the labels (N,). Anything else: text, as
    :func:`write_text`.
    """
    fmt = _table_format(out)
    if fmt is not None:
        from distgmm.jobs._export import encode_table, result_table

        table = result_table(prediction.labels, ids=prediction.ids, proba=prediction.proba)
        with atomic_write(out) as f:
            f.write(encode_table(table, fmt))
        return out
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
