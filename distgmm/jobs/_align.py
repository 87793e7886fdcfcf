"""Stable label ids across refits: match a new model's components to a reference model's.

The cost of pairing new component ``i`` with old component ``j`` is the Bhattacharyya
distance between the two Gaussians; :func:`scipy.optimize.linear_sum_assignment` finds the
pairing of least total cost, and the new model's components are renumbered so that each
takes the id of the old component it is paired with. With a different number of components,
unpaired new components take the ids left free, in their own order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from distgmm._kernels import full_covariances
from distgmm.errors import DistgmmInputError

__all__ = ["bhattacharyya_distances", "alignment_permutation",
           "permute_components"]


def _covariances(model: Any) -> np.ndarray:
    """Every component's covariance as a (K, D, D) array, whatever the covariance type."""
    k, d = model.means_.shape
    return full_covariances(model.covariances_, model.covariance_type, k, d)


def bhattacharyya_distances(new: Any, old: Any) -> np.ndarray:
    """Bhattacharyya distance between every component of ``new`` and of ``old``, (K_new, K_old).

    ``D_B = 1/8 dm^T S^-1 dm + 1/2 ln(det S / sqrt(det S1 det S2))`` with ``S = (S1 + S2) / 2``.
    """
    cov_new, cov_old = _covariances(new), _covariances(old)
    logdet_new = np.linalg.slogdet(cov_new)[1]
    logdet_old = np.linalg.slogdet(cov_old)[1]
    out = np.empty((cov_new.shape[0], cov_old.shape[0]))
    for i, (m1, s1) in enumerate(zip(new.means_, cov_new)):
        for j, (m2, s2) in enumerate(zip(old.means_, cov_old)):
            s = 0.5 * (s1 + s2)
            dm = m1 - m2
            maha = float(dm @ np.linalg.solve(s, dm))
            out[i, j] = maha / 8.0 + 0.5 * (np.linalg.slogdet(s)[1]
                                            - 0.5 * (logdet_new[i] + logdet_old[j]))
    return out


def alignment_permutation(new: Any, old: Any) -> np.ndarray:
    """``perm`` such that new component ``perm[p]`` gets id ``p``, matching ``old``'s ids.

    Raises
    ------
    DistgmmInputError
        If the models have different feature counts.
    """
    k_new, d_new = new.means_.shape
    k_old, d_old = old.means_.shape
    if d_new != d_old:
        raise DistgmmInputError(
            f"--align-to model has {d_old} features but the new model has {d_new}; align "
            "to a model fitted on the same kind of data.")
    rows, cols = linear_sum_assignment(bhattacharyya_distances(new, old))
    perm = np.full(k_new, -1)
    placed = set()
    for i, j in zip(rows, cols):
        if j < k_new:
            perm[j] = i
            placed.add(int(i))
    rest = iter(i for i in range(k_new) if i not in placed)
    for p in range(k_new):
        if perm[p] < 0:
            perm[p] = next(rest)
    return perm


def permute_components(model: Any, perm: np.ndarray) -> Any:
    """Reorder a fitted model's components in place (new id ``p`` = old component ``perm[p]``).

    A Bayesian mixture's posterior arrays are reordered too. Under a Dirichlet-process prior
    the components' order is part of the model (the stick-breaking weights depend on it),
    so such a model is refused: fit it with ``weight_concentration_prior_type=
    "dirichlet_distribution"`` to align it.
    """
    perm = np.asarray(perm)
    per_component = ["weights_", "means_"]
    if model.covariance_type != "tied":
        per_component += ["covariances_", "precisions_cholesky_", "precisions_"]
    if hasattr(model, "weight_concentration_"):
        if isinstance(model.weight_concentration_, tuple):
            raise DistgmmInputError(
                "--align-to cannot renumber a Bayesian mixture with a Dirichlet-process prior "
                "(its stick-breaking weights depend on the components' order); fit with "
                "--prior dirichlet_distribution to align it.")
        per_component += ["weight_concentration_", "mean_precision_"]
        if model.covariance_type != "tied":
            per_component.append("degrees_of_freedom_")
    for name in per_component:
        setattr(model, name, np.asarray(getattr(model, name))[perm])
    return model
