"""Model files: a fitted mixture as a versioned, checksummed ``.npz`` (no pickle) and its fingerprint.

Format (``kind = "distgmm-model"``, ``format_version = 3``), written with
:func:`distgmm._serialize.save_arrays` (atomic rename, SHA-256 over arrays and metadata)::

    arrays   weights (K,), means (K, D), covariances, precisions_cholesky   (float64)
             covariances / precisions_cholesky: (K, D, D) full, (D, D) tied,
             (K, D) diag, (K,) spherical
             a Bayesian mixture also: mean_precision (K,), degrees_of_freedom (K,) or ()
             for tied, weight_concentration (K,) or weight_concentration_a/_b (K,) for a
             Dirichlet process, mean_prior (D,), covariance_prior (its covariance shape)
    meta     {"kind", "format_version", "distgmm_version", "mixture" ("gaussian" or
              "bayesian"), "covariance_type", "n_components", "n_features",
              "estimator": {"tol", "reg_covar", "max_iter", "n_init", "init_params",
                            "random_state"; a Bayesian mixture also
                            "weight_concentration_prior_type", "weight_concentration_prior",
                            "mean_precision_prior", "degrees_of_freedom_prior"},
              "fit": {"converged", "n_iter", "lower_bound", "lower_bounds",
                      "lower_bounds_per_init"},
              "provenance": {...free-form JSON: store, rows, alignment...},
              "scoring": {...} (optional): the training scores' figures and outlier
                         threshold, :meth:`distgmm._scores.ScoreProfile.to_dict`}

Model files may live at any fsspec URL (``s3://bucket/model.npz``, with the command's
``--storage-option`` values): written in one PUT, read with one GET, checked the same way.
A URL is never taken for a local path: an unknown protocol is an error.

Version 1 files (Gaussian mixtures written before Bayesian ones existed) are read as
Gaussian mixtures; version 1 and 2 files (written before the training scores were
recorded) have no ``scoring`` block, and are read with ``training_scores_ = None``.

The file's SHA-256 digest is the model **fingerprint** recorded by label jobs. Nothing time-
or host-dependent is stored, so the same fit (including one resumed from a checkpoint) gives
the same bytes and the same fingerprint. Loading checks the kind, the version, the array set,
every shape against ``covariance_type``/K/D, finiteness, the weights, and that the precision
factors are those of the covariances; anything else is refused with a one-line message.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distgmm._serialize import CorruptFileError, load_arrays, save_arrays
from distgmm.errors import DistgmmInputError

__all__ = ["MODEL_KIND", "MODEL_FORMAT_VERSION", "ModelFile", "save_model", "load_model",
           "read_model", "is_model_file", "check_model_destination"]

logger = logging.getLogger(__name__)

MODEL_KIND = "distgmm-model"
MODEL_FORMAT_VERSION = 3
_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")
_ESTIMATOR_KEYS = ("tol", "reg_covar", "max_iter", "n_init", "init_params", "random_state")
#: A Bayesian mixture's variational arrays and priors, besides the Gaussian ones.
_BAYESIAN_ARRAYS = ("mean_precision", "degrees_of_freedom", "mean_prior", "covariance_prior")
_BAYESIAN_ESTIMATOR_KEYS = ("weight_concentration_prior_type", "weight_concentration_prior",
                            "mean_precision_prior", "degrees_of_freedom_prior")
_META_KEYS = {"kind", "format_version", "distgmm_version", "covariance_type", "n_components",
              "n_features", "estimator", "fit", "provenance"}


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file.

    Attributes
    ----------
    model : distgmm.GaussianMixture or distgmm.BayesianGaussianMixture
        The fitted estimator.
    fingerprint : str
        SHA-256 digest of the file's content (what label state records).
    path : str
    provenance : dict
        Free-form JSON the writer recorded (store, rows, alignment, ...).
    """

    model: Any
    fingerprint: str
    path: str
    provenance: dict[str, Any] = field(default_factory=dict)


def _cov_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]


def _plain(value: Any) -> Any:
    """``random_state`` as JSON: an int or None (a RandomState/Generator is not reproducible)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return None


def save_model(model: Any, path: str | os.PathLike, *,
               provenance: dict[str, Any] | None = None,
               storage_options: dict[str, Any] | None = None) -> str:
    """Write a fitted distgmm mixture to ``path`` atomically.

    Parameters
    ----------
    model : distgmm.GaussianMixture or distgmm.BayesianGaussianMixture
        Fitted (``means_`` etc. set).
    path : path-like or URL
        Destination ``.npz`` file (local, or an fsspec URL); replaced atomically if it exists.
    provenance : dict, optional
        JSON-serialisable facts stored with the model (part of the fingerprint).
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    str
        The fingerprint (SHA-256 digest) of the written file.
    """
    from distgmm import __version__
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model, "precisions_cholesky_")
    arrays = {name: np.asarray(getattr(model, f"{name}_"), dtype=np.float64) for name in _ARRAYS}
    k, d = arrays["means"].shape
    bayesian = hasattr(model, "weight_concentration_")
    estimator = {key: (_plain(model.random_state) if key == "random_state"
                       else getattr(model, key)) for key in _ESTIMATOR_KEYS}
    if bayesian:
        arrays.update({name: np.asarray(getattr(model, f"{name}_"), dtype=np.float64)
                       for name in _BAYESIAN_ARRAYS})
        concentration = model.weight_concentration_
        if isinstance(concentration, tuple):
            arrays["weight_concentration_a"], arrays["weight_concentration_b"] = (
                np.asarray(c, dtype=np.float64) for c in concentration)
        else:
            arrays["weight_concentration"] = np.asarray(concentration, dtype=np.float64)
        estimator["weight_concentration_prior_type"] = model.weight_concentration_prior_type
        for key in _BAYESIAN_ESTIMATOR_KEYS[1:]:
            estimator[key] = float(getattr(model, f"{key}_"))
    meta = {
        "kind": MODEL_KIND,
        "format_version": MODEL_FORMAT_VERSION,
        "distgmm_version": __version__,
        "mixture": "bayesian" if bayesian else "gaussian",
        "covariance_type": model.covariance_type,
        "n_components": int(k),
        "n_features": int(d),
        "estimator": estimator,
        "fit": {
            "converged": bool(getattr(model, "converged_", False)),
            "n_iter": int(getattr(model, "n_iter_", 0)),
            "lower_bound": float(getattr(model, "lower_bound_", math.nan)),
            "lower_bounds": [float(v) for v in getattr(model, "lower_bounds_", [])],
            "lower_bounds_per_init": [[float(v) for v in h]
                                      for h in getattr(model, "lower_bounds_per_init_", [])],
        },
        "provenance": dict(provenance or {}),
    }
    scoring = getattr(model, "training_scores_", None)
    if scoring is not None:
        meta["scoring"] = scoring.to_dict()
    digest = save_arrays(path, arrays, meta, storage_options)
    logger.info("wrote model %s (K=%d, D=%d, %s), fingerprint %s", os.fspath(path), k, d,
                model.covariance_type, digest[:12])
    return digest


def _refuse(path: str, problem: str) -> DistgmmInputError:
    return DistgmmInputError(f"model file {path} {problem}; write it again with `distgmm fit` "
                             "or distgmm.save_model.")


def _check_meta(path: str, meta: dict) -> tuple[str, int, int]:
    if not isinstance(meta, dict) or meta.get("kind") != MODEL_KIND:
        raise DistgmmInputError(
            f"{path} is not a distgmm model file (kind {meta.get('kind')!r} instead of "
            f"{MODEL_KIND!r}); pass a file written by `distgmm fit` or `distgmm select`.")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise DistgmmInputError(
            f"model file {path} has format version {version!r}, but this distgmm reads "
            f"version {MODEL_FORMAT_VERSION}; upgrade distgmm or refit the model.")
    if version not in (1, 2, MODEL_FORMAT_VERSION):
        raise _refuse(path, f"has unsupported format version {version!r}")
    keys = _META_KEYS | ({"mixture"} if version >= 2 else set())
    missing = sorted(keys - set(meta))
    extra = sorted(set(meta) - keys - ({"scoring"} if version >= 3 else set()))
    if missing or extra:
        raise _refuse(path, f"has metadata keys missing {missing} / unexpected {extra}")
    from distgmm._kernels import COVARIANCE_TYPES

    cov = meta["covariance_type"]
    if cov not in COVARIANCE_TYPES:
        raise _refuse(path, f"has covariance type {cov!r}, not one of {', '.join(COVARIANCE_TYPES)}")
    k, d = meta["n_components"], meta["n_features"]
    if not (isinstance(k, int) and isinstance(d, int) and k >= 1 and d >= 1):
        raise _refuse(path, f"has invalid n_components={k!r} / n_features={d!r}")
    mixture = meta.get("mixture", "gaussian")
    if mixture not in ("gaussian", "bayesian"):
        raise _refuse(path, f"has mixture kind {mixture!r}, not gaussian or bayesian")
    estimator, fit = meta["estimator"], meta["fit"]
    expected = set(_ESTIMATOR_KEYS) | (set(_BAYESIAN_ESTIMATOR_KEYS) if mixture == "bayesian"
                                       else set())
    if not isinstance(estimator, dict) or set(estimator) != expected:
        raise _refuse(path, "has invalid estimator settings")
    if not isinstance(fit, dict) or not {"converged", "n_iter", "lower_bound"} <= set(fit):
        raise _refuse(path, "has an invalid fit record")
    if not isinstance(meta["provenance"], dict):
        raise _refuse(path, "has invalid provenance")
    return cov, k, d


def _expected_arrays(arrays: dict[str, np.ndarray], cov: str, k: int, d: int,
                     bayesian: bool) -> dict[str, tuple[int, ...]]:
    """The arrays a model file must hold, with their shapes."""
    expected = {"weights": (k,), "means": (k, d), "covariances": _cov_shape(cov, k, d),
                "precisions_cholesky": _cov_shape(cov, k, d)}
    if bayesian:
        prior = {"full": (d, d), "tied": (d, d), "diag": (d,), "spherical": ()}[cov]
        expected.update(mean_precision=(k,), degrees_of_freedom=() if cov == "tied" else (k,),
                        mean_prior=(d,), covariance_prior=prior)
        names = (("weight_concentration",) if "weight_concentration" in arrays
                 else ("weight_concentration_a", "weight_concentration_b"))
        expected.update({name: (k,) for name in names})
    return expected


def _check_arrays(path: str, arrays: dict[str, np.ndarray], cov: str, k: int, d: int,
                  bayesian: bool = False) -> None:
    expected = _expected_arrays(arrays, cov, k, d, bayesian)
    if set(arrays) != set(expected):
        raise _refuse(path, f"holds arrays {sorted(arrays)} instead of {sorted(expected)}")
    for name, shape in expected.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != np.float64:
            raise _refuse(path, f"has {name} of shape {a.shape} and dtype {a.dtype}, expected "
                          f"{shape} float64 for {k} {cov} components in {d} features")
        if not np.all(np.isfinite(a)):
            raise _refuse(path, f"has non-finite values in {name}")
    w = arrays["weights"]
    if (w < 0).any() or not abs(w.sum() - 1.0) < 1e-6:
        raise _refuse(path, f"has mixture weights that are not a distribution (sum {w.sum():.9g})")
    from distgmm._kernels import precision_cholesky

    try:
        expected_chol = precision_cholesky(arrays["covariances"], cov)
    except ValueError:
        raise _refuse(path, "has a covariance that is not positive definite") from None
    if not np.allclose(expected_chol, arrays["precisions_cholesky"], rtol=1e-6, atol=1e-12):
        raise _refuse(path, "has precision factors that do not match its covariances")


def read_model(path: str | os.PathLike,
               storage_options: dict[str, Any] | None = None) -> ModelFile:
    """Load and validate a model file (a local path or an fsspec URL); return the estimator
    with its fingerprint.

    Raises
    ------
    DistgmmInputError
        Missing file, not a distgmm model, unknown version, or inconsistent content.
    distgmm._serialize.CorruptFileError
        Truncated, damaged or edited file (checksum mismatch).
    """
    from distgmm._bayesian_estimator import BayesianGaussianMixture
    from distgmm._estimator import GaussianMixture
    from distgmm._kernels import precisions_from_cholesky

    from distgmm._atomic import file_exists, read_file

    path = os.fspath(path)
    if not file_exists(path, storage_options):
        raise DistgmmInputError(f"model file {path} does not exist; check the path or fit one "
                                "with `distgmm fit`.")
    if read_file(path, storage_options)[:4] != b"PK\x03\x04":  # an .npz is a zip file
        raise CorruptFileError(f"model file {path} is not an .npz file; pass a file written by "
                               "`distgmm fit` or `distgmm select`.")
    try:
        arrays, meta, digest = load_arrays(path, storage_options)
    except CorruptFileError as exc:
        raise CorruptFileError(f"model {exc}") from None
    cov, k, d = _check_meta(path, meta)
    bayesian = meta.get("mixture") == "bayesian"
    _check_arrays(path, arrays, cov, k, d, bayesian)
    est = meta["estimator"]
    common = dict(n_components=k, covariance_type=cov, tol=est["tol"],
                  reg_covar=est["reg_covar"], max_iter=est["max_iter"], n_init=est["n_init"],
                  init_params=est["init_params"], random_state=est["random_state"])
    if bayesian:
        model = BayesianGaussianMixture(**common, **{
            key: est[key] for key in _BAYESIAN_ESTIMATOR_KEYS})
        for key in _BAYESIAN_ESTIMATOR_KEYS[1:]:
            setattr(model, f"{key}_", float(est[key]))
        for name in _BAYESIAN_ARRAYS:
            value = arrays[name]
            setattr(model, f"{name}_", float(value) if value.ndim == 0 else value)
        model.weight_concentration_ = (
            arrays["weight_concentration"] if "weight_concentration" in arrays
            else (arrays["weight_concentration_a"], arrays["weight_concentration_b"]))
    else:
        model = GaussianMixture(**common)
    for name in _ARRAYS:
        setattr(model, f"{name}_", arrays[name])
    model.precisions_ = precisions_from_cholesky(arrays["precisions_cholesky"], cov)
    fit = meta["fit"]
    model.converged_ = bool(fit["converged"])
    model.n_iter_ = int(fit["n_iter"])
    model.lower_bound_ = float(fit["lower_bound"])
    model.lower_bounds_ = list(fit.get("lower_bounds", []))
    model.lower_bounds_per_init_ = [list(h) for h in fit.get("lower_bounds_per_init", [])]
    model.n_features_in_ = d
    model.training_scores_ = _scoring(path, meta.get("scoring"))
    return ModelFile(model=model, fingerprint=digest, path=path,
                     provenance=dict(meta["provenance"]))


def _scoring(path: str, block: Any) -> Any:
    """The ``scoring`` block as a :class:`~distgmm._scores.ScoreProfile` (None if absent),
    refusing one that is malformed."""
    if block is None:
        return None
    from distgmm._scores import ScoreProfile

    try:
        profile = ScoreProfile.from_dict(block)
        sketch = profile.sketch
        numbers = (sketch.upper, sketch.weight, sketch.mean, sketch.moments.m2,
                   profile.settling, profile.outlier_threshold, profile.outlier_share)
        valid = (all(math.isfinite(v) for v in numbers) and sketch.weight > 0
                 and sketch.moments.m2 >= 0 and 0 < profile.outlier_quantile < 1
                 and 0 <= profile.outlier_share <= 1 and sketch.first >= 0
                 and np.all(np.isfinite(sketch.counts)) and np.all(sketch.counts >= 0))
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise _refuse(path, "has an invalid scoring block")
    return profile


def load_model(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Any:
    """Load a model file written by :func:`save_model` as a fitted ``GaussianMixture``.

    Never unpickles: the file is NumPy arrays plus JSON, checked against its SHA-256 and
    validated (version, shapes, covariance type) before use. Use :func:`read_model` to also
    get the fingerprint.
    """
    return read_model(path, storage_options).model


def is_model_file(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``path`` is a file written by :func:`save_model` (judged by its metadata's
    kind, not its checksum: a damaged model file may be replaced)."""
    import io
    import json
    import zipfile

    from distgmm._atomic import read_file

    try:
        data = io.BytesIO(read_file(path, storage_options))
        with zipfile.ZipFile(data) as archive, archive.open("__meta__.npy") as raw:
            meta = json.loads(np.lib.format.read_array(raw, allow_pickle=False).tobytes())
    except Exception:  # not a zip, no metadata, not JSON: not ours
        return False
    return isinstance(meta, dict) and meta.get("kind") == MODEL_KIND


def check_model_destination(path: str | os.PathLike, *, overwrite: bool,
                            option: str = "--model",
                            storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, a model file that cannot or must not be written: a
    directory, a path under a file or in an unwritable place (a URL: an unknown protocol,
    an unreachable or missing bucket), an existing file without ``overwrite``, or an
    existing file that is not a distgmm model (whatever ``overwrite`` says)."""
    from distgmm._atomic import check_output_file, check_output_url, is_url

    path = os.fspath(path)
    if is_url(path):
        exists = check_output_url(path, what=option, storage_options=storage_options)
    else:
        check_output_file(path, what=option, kind="npz", replace=overwrite)
        exists = os.path.lexists(path)
    if exists:
        if not overwrite:
            raise DistgmmInputError(f"model file {path} already exists; pass --overwrite to "
                                    f"replace it, or choose another {option} path.")
        if not is_model_file(path, storage_options):
            raise DistgmmInputError(f"{option} {path} exists and is not a distgmm model file; "
                                    "refusing to replace it. Choose another path or remove "
                                    "it yourself.")
