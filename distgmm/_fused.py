"""Compiled (numba) fused kernels: E-step, log-likelihood and centered statistics in one sweep.

These compute what the NumPy reference kernels in :mod:`distgmm._kernels` and
:mod:`distgmm._statistics` compute, to rounding, in one pass over a chunk held in cache.
Tests compare them with the NumPy reference on random inputs.

Which kernel runs (per chunk, decided from the parameters):

expanded-moment kernels (:func:`_fused_stats_expanded`; full and tied always, diag and
spherical from K * D >= 32)
    Blocks of rows become feature-major matrices of expanded features ``[x x^T terms, x, 1]``
    (rows shifted by the mean of the component means), so a block costs two GEMMs whatever
    K: ``Gt @ Z^T`` gives every weighted log-density and ``R^T @ Z`` every first and second
    moment. Components whose mean lies more than 1000 standard deviations from the shift
    (typically one collapsing onto a few points) are computed exactly centered by a loop,
    so cancellation stays below ~1e-10 relative for every component. When most components
    would need that loop (diag/spherical only), the loop kernel runs instead.
loop kernel (:func:`_fused_stats`; diag and spherical with K * D < 32, or most means far
from the shift)
    Statistics centered on each block's own weighted means, merged with the same pairwise
    correction as chunks.

Labels alone for diag and spherical models (:func:`fused_labels`, expanded kernels without
exactly-centered components) take the log-density GEMM in float32, which runs at twice the
rate. Each float32 value is within ``err_k * ||z_i||`` of the float64 one, with
``err_k = (F + 6) * 2**-24 * ||G_k||`` (any summation order; the features are products of
``x - shift`` rounded to float32, each within 3 roundings of its float64 value; the float64
path's own rounding is in a 1% slack). A row keeps its float32 winner only if that
winner's lower bound clears every other component's upper bound; otherwise its
log-densities are redone in float64. Every kept winner is therefore the float64 path's
winner; a redone row is summed in another order than the float64 GEMM, so only
components tied to float64 rounding could come out differently. The bounds are per
component: with one bound for all, a model with one tight component (a large ``||G_k||``)
would redo most rows. Full covariances keep float64 labels: their bound is looser, and
redoing rows costs more than the float32 GEMM saves (``bench/README.md``).

Exponentials use a polynomial the compiler vectorises (:func:`_exp_or_zero`, within 1 ulp
of libm, flushed to zero below exp(-500)). Kernels whose loops store while they compute are
compiled without reassociation, so every chunk gives the same bits in every worker process.

Set ``DISTGMM_KERNEL=numpy`` to use the NumPy reference everywhere (for example to compare
the two paths in a benchmark).
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import numpy as np

try:  # numba is a dependency; the NumPy path remains the reference and the fallback
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

__all__ = ["use_fused", "fused_statistics", "fused_log_prob", "fused_labels", "fused_row_moments",
           "KernelCall", "kernel_calls", "fit_kernels", "describe_kernels", "missing_kernels",
           "compile_kernels"]

#: Rows per block of the loop kernels: (K, 256) log-densities stay in the L1/L2 caches.
_BLOCK = 256
#: exp(x) is flushed to zero below this (see :func:`_exp_or_zero`).
_EXP_FLOOR = -500.0
#: K * D from which diag/spherical use the expanded GEMM kernels: below, the loop kernel
#: does fewer operations than a GEMM's setup costs.
_DIAG_GEMM_MIN_WORK = 32
#: Squared distance of a mean from the shift, in the component's smallest variances, above
#: which that component is computed exactly centered (1000 standard deviations: beyond,
#: the expanded form's cancellation would exceed ~1e-10 relative).
_EXPANDED_MAX_SPREAD = 1e6
#: Margin on the float32 labels' rounding bound (covers the float64 path's own rounding).
_LABEL32_SLACK = 1.01
#: Block rows of the expanded kernels: (F, rows) features and (K, rows) log-densities in
#: cache. Up to _WIDE_FEATURES expanded features, 512 rows were fastest (per row, on one
#: core); beyond, 128 (the blocks outgrow the cache). Measurements in bench/README.md.
_EXPANDED_BLOCK_ROWS = 512
_WIDE_BLOCK_ROWS = 128
_WIDE_FEATURES = 200
#: Float32 labels: with more features than this, the features are made in float64 and
#: converted (the tiled transpose with float32 stores is several times slower at large D).
_FLOAT32_DIRECT_MAX_FEATURES = 16
_LOG_2PI = math.log(2.0 * math.pi)


def use_fused() -> bool:
    """Whether the compiled kernels are used (numba importable and not disabled)."""
    return HAVE_NUMBA and os.environ.get("DISTGMM_KERNEL", "numba") != "numpy"


def _jit(fn):
    if not HAVE_NUMBA:
        return fn
    return numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, boundscheck=False,
                      error_model="numpy")(fn)


def _jit_ordered(fn):
    """``_jit`` without reassociation, for kernels whose loops store while they compute.

    With reassociation allowed, LLVM may compute such a loop (and the exponential inlined
    into it) in a different order in its vector body than in its scalar fallback, and picks
    between them by run-time pointer checks: the same chunk then gave results differing in
    the last bits from one worker process to another. Without it, vector and scalar code
    do the same operations in the same order, and every result is reproducible bit for bit.
    """
    if not HAVE_NUMBA:
        return fn
    return numba.njit(cache=True, nogil=True, fastmath={"contract"}, boundscheck=False,
                      error_model="numpy")(fn)


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01    # fdlibm's split of log(2): k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_POW2_NEG = np.ldexp(1.0, -np.arange(0, 730))   # 2^-j for the exponents exp(-500..0) needs


def _exp_or_zero(x):
    """``exp(x)`` for ``x <= 0``, flushed to zero below ``exp(-500)``; within 1 ulp of libm.

    Written out (Cody-Waite reduction, degree-13 Taylor polynomial on |r| <= log(2)/2,
    2^k from a table) so that the compiler vectorises the loops that call it: 1.8 ns per
    value against 6.9 ns for the scalar libm call, which made the E-step's exponentials the
    largest cost of a pass at small D. Values below exp(-500) are more than 200 orders of
    magnitude below the row's largest (which is 1) and change no float64 sum, but
    exp(-700..-745) and products with them are subnormal numbers, which make every later
    multiply and BLAS call 10-100x slower on well-separated clusters.
    """
    if not x > _EXP_FLOOR:
        return 0.0
    kf = math.floor(x * _LOG2E + 0.5)
    r = (x - kf * _LN2_HI) - kf * _LN2_LO   # no reassociation here: see the jit below
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _POW2_NEG[int(-kf)]


if HAVE_NUMBA:  # contraction (FMA) only: reassociation would undo the two-part reduction
    _exp_or_zero = numba.njit(cache=True, nogil=True, fastmath={"contract"}, inline="always",
                              error_model="numpy")(_exp_or_zero)


@_jit
def _block_log_prob(xt, start, stop, prec, mc, log_const, lp):
    """Diag/spherical weighted log-probabilities of points ``start:stop`` of ``xt`` (D, n)
    into ``lp`` (K, block rows): ``prec`` (K, D) precisions, ``mc`` (K, D) shifted means."""
    D = xt.shape[0]
    K = lp.shape[0]
    m = stop - start
    maha = np.empty(m)
    for k in range(K):
        maha[:] = 0.0
        for a in range(D):
            mu = mc[k, a]
            p = prec[k, a]
            for i in range(m):
                d = xt[a, start + i] - mu
                maha[i] += d * d * p
        c = log_const[k]
        for i in range(m):
            lp[k, i] = c - 0.5 * maha[i]


@_jit
def _fused_stats(xt, w, prec, mc, log_const, scores):
    """Diag/spherical loop kernel, exactly centered: E-step, weighted log-likelihood and
    per-component count/mean/scatter diagonal in one sweep (few components and features,
    or most means far from the shift); each row's ``log p(x_i)`` into ``scores`` unless it
    is empty."""
    D, n = xt.shape
    K = log_const.shape[0]
    resp_sum = np.zeros(K)
    mean = np.zeros((K, D))
    scatter = np.zeros((K, D))
    ll = 0.0
    lp = np.empty((K, _BLOCK))
    mx = np.empty(_BLOCK)
    tot = np.empty(_BLOCK)
    mean_b = np.empty(D)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        m = stop - start
        _block_log_prob(xt, start, stop, prec, mc, log_const, lp)
        ll += _responsibilities_columns(lp[:, :m], w, start, mx, tot, scores)  # w_i p(k | x_i)
        for k in range(K):
            wb = 0.0
            for i in range(m):
                wb += lp[k, i]
            if wb <= 0.0:
                continue
            for a in range(D):
                acc = 0.0
                for i in range(m):
                    acc += lp[k, i] * xt[a, start + i]
                mean_b[a] = acc / wb
            # merge the block into the running statistics (pairwise correction)
            wt = resp_sum[k] + wb
            frac = wb / wt
            cross = resp_sum[k] * frac
            for a in range(D):
                mu = mean_b[a]
                acc = 0.0
                for i in range(m):
                    dv = xt[a, start + i] - mu
                    acc += lp[k, i] * dv * dv
                delta_a = mu - mean[k, a]
                scatter[k, a] += acc + cross * delta_a * delta_a
                mean[k, a] += delta_a * frac
            resp_sum[k] = wt
    return resp_sum, mean, scatter, ll


@_jit
def _fused_log_prob(xt, prec, mc, log_const):
    D, n = xt.shape
    K = log_const.shape[0]
    out = np.empty((n, K))
    lp = np.empty((K, _BLOCK))
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        _block_log_prob(xt, start, stop, prec, mc, log_const, lp)
        for i in range(stop - start):
            for k in range(K):
                out[start + i, k] = lp[k, i]
    return out


def _prepare(X, weights, means, prec_chol, covariance_type):
    """Diag/spherical loop kernels' inputs: shifted transposed points, precisions (K, D),
    shifted means and log constants."""
    K, D = means.shape
    weights, means, prec_chol = (np.asarray(a, dtype=np.float64)
                                 for a in (weights, means, prec_chol))  # as _expanded_setup
    shift = means.mean(axis=0)
    xt = np.ascontiguousarray((np.asarray(X, dtype=np.float64) - shift).T)
    pc = prec_chol if covariance_type == "diag" else np.repeat(prec_chol[:, None], D, axis=1)
    with np.errstate(divide="ignore"):
        log_const = -0.5 * D * _LOG_2PI + np.log(pc).sum(axis=1) + np.log(weights)
    return xt, shift, np.ascontiguousarray(pc**2), np.ascontiguousarray(means - shift), log_const


# ------------------------------------------------------------------ expanded-moment kernels
#
# With z(x) = [quadratic terms of x, x, 1] (the rows shifted by the mean of the component
# means), every weighted log-density is linear in z: log w_k N(x | k) = c_k + Gt[k] . z(x),
# and every per-component first and second moment is a column of R^T Z. So one block of
# rows costs two GEMMs, Gt @ Z^T and R^T @ Z, whatever K. Quadratic terms are x_a x_c (a >= c)
# for full/tied covariances and x_a^2 for diag/spherical.
#
# The price is cancellation, in the log-density and in ``sum r x x^T - W m m^T``, for a
# component whose mean lies far from the shift relative to its own spread. Components more
# than 1000 standard deviations from it (``exact`` in :func:`_expanded_setup`; typically a
# component collapsing onto a few points) are computed exactly centered instead, by a loop
# over the block, so every component stays within ~1e-10 relative of the reference.


@_jit_ordered
def _expanded_features(X, start, shift, cross_terms, zt):
    """Fill rows ``:Q + D`` of ``zt`` (Q + D + 1, m) with the expanded features of rows
    ``start:start + m`` of ``X``; the last row is the constant 1, set once by the caller.

    Feature-major, so that every product below and every later per-row operation runs
    along contiguous rows of ``m`` values and vectorises.
    """
    F, m = zt.shape
    D = X.shape[1]
    Q = F - D - 1
    for i0 in range(0, m, 8):  # 8 x D tiles: neither the reads nor the writes stride far
        i1 = min(i0 + 8, m)
        for a in range(D):
            sa = shift[a]
            for i in range(i0, i1):
                zt[Q + a, i] = X[start + i, a] - sa
    if cross_terms:
        t = 0
        for a in range(D):
            for c in range(a + 1):
                for i in range(m):
                    zt[t, i] = zt[Q + a, i] * zt[Q + c, i]
                t += 1
    else:
        for a in range(D):
            for i in range(m):
                zt[a, i] = zt[Q + a, i] * zt[Q + a, i]


@_jit_ordered
def _expanded_block_log_prob(X, start, shift, Gt, log_const, cross_terms, exact, mc, fac, zt, lpt,
                             scratch):
    """Weighted log-densities of a block into ``lpt`` (K, m); fills ``zt`` for the statistics.

    Components listed in ``exact`` get ``log_const[k] - 0.5 |(x - mc_k) U_k|^2`` (cross terms:
    ``fac`` holds the precision factors U) or ``... - 0.5 sum p (x - mc_k)^2`` (diag:
    ``fac[k, 0]`` holds the precisions), computed directly. ``scratch`` is (2, >= m).
    """
    _expanded_features(X, start, shift, cross_terms, zt)
    np.dot(Gt, zt, lpt)
    K, m = lpt.shape
    F = zt.shape[0]
    D = X.shape[1]
    Q = F - D - 1
    for k in range(K):
        c = log_const[k]
        for i in range(m):
            lpt[k, i] += c
    maha = scratch[0]
    acc = scratch[1]
    for k in exact:
        maha[:m] = 0.0
        if cross_terms:
            for j in range(D):
                acc[:m] = 0.0
                for a in range(j + 1):
                    mu = mc[k, a]
                    u = fac[k, a, j]
                    for i in range(m):
                        acc[i] += (zt[Q + a, i] - mu) * u
                for i in range(m):
                    maha[i] += acc[i] * acc[i]
        else:
            for a in range(D):
                mu = mc[k, a]
                p = fac[k, 0, a]
                for i in range(m):
                    d = zt[Q + a, i] - mu
                    maha[i] += d * d * p
        c = log_const[k]
        for i in range(m):
            lpt[k, i] = c - 0.5 * maha[i]


@_jit_ordered
def _block_buffers(n, F, K, block_rows):
    """Feature and log-density buffers for blocks of ``block_rows`` rows, and exact-size ones for the
    last, shorter block (np.dot needs contiguous operands, which column slices of a (F, block_rows)
    buffer are not), plus (2, block_rows) scratch. Row ``F - 1`` of the features is the constant 1:
    its moment is the responsibility sum."""
    tail = n % block_rows
    zt_full, lpt_full = np.empty((F, block_rows)), np.empty((K, block_rows))
    zt_tail, lpt_tail = np.empty((F, tail)), np.empty((K, tail))
    zt_full[F - 1] = 1.0
    zt_tail[F - 1] = 1.0
    return zt_full, lpt_full, zt_tail, lpt_tail, np.empty((2, block_rows))


@_jit_ordered
def _responsibilities_columns(lpt, w, start, mx, tot, scores):
    """Turn weighted log-probabilities ``lpt`` (K, m) into ``w_i * p(k | x_i)`` in place and
    return ``sum_i w_i log p(x_i)`` (rows ``start:start + m`` of ``w``); each ``log p(x_i)``
    also goes to ``scores[start + i]`` unless ``scores`` is empty. Loops run along rows
    of ``m`` values and vectorise; ``mx`` and ``tot`` are scratch of at least m values."""
    K, m = lpt.shape
    for i in range(m):
        mx[i] = lpt[0, i]
    for k in range(1, K):
        for i in range(m):
            mx[i] = max(mx[i], lpt[k, i])
    for i in range(m):
        tot[i] = 0.0
    for k in range(K):
        for i in range(m):
            e = _exp_or_zero(lpt[k, i] - mx[i])
            lpt[k, i] = e
            tot[i] += e
    ll = 0.0
    keep = scores.shape[0] > 0
    for i in range(m):
        wi = w[start + i]
        score = mx[i] + math.log(tot[i])
        if keep:
            scores[start + i] = score
        ll += wi * score
        tot[i] = wi / tot[i]
    for k in range(K):
        for i in range(m):
            lpt[k, i] *= tot[i]
    return ll


@_jit_ordered
def _fused_stats_expanded(X, w, shift, Gt, log_const, cross_terms, exact, mc, fac, block_rows,
                          scores):
    """E-step, log-likelihood and centered statistics with two GEMMs per block of ``block_rows`` rows
    (and each row's ``log p(x_i)`` into ``scores`` unless it is empty)."""
    n, D = X.shape
    K, F = Gt.shape
    Q = F - D - 1
    resp_sum = np.zeros(K)
    mean = np.zeros((K, D))
    scatter = np.zeros((K, D, D)) if cross_terms else np.zeros((K, 1, D))
    ll = 0.0
    zt_full, lpt_full, zt_tail, lpt_tail, scratch = _block_buffers(n, F, K, block_rows)
    mx = np.empty(block_rows)
    tot = np.empty(block_rows)
    mom = np.empty((K, F))
    wb = np.empty(K)
    mean_b = np.empty(D)
    sc = np.empty((D, D))
    dev = np.empty((D, block_rows))
    is_exact = np.zeros(K, dtype=np.bool_)
    for k in exact:
        is_exact[k] = True
    for start in range(0, n, block_rows):
        m = min(block_rows, n - start)
        zt = zt_full if m == block_rows else zt_tail
        lpt = lpt_full if m == block_rows else lpt_tail
        _expanded_block_log_prob(X, start, shift, Gt, log_const, cross_terms, exact, mc, fac, zt, lpt,
                                 scratch)
        ll += _responsibilities_columns(lpt, w, start, mx, tot, scores)
        np.dot(lpt, zt.T, mom)
        for k in range(K):
            wb[k] = mom[k, F - 1]
        for k in range(K):
            if wb[k] <= 0.0:
                continue
            for a in range(D):
                mean_b[a] = mom[k, Q + a] / wb[k]
            # the block's scatter about its own mean, into sc (lower triangle / diagonal)
            if is_exact[k]:
                for a in range(D):
                    mu = mean_b[a]
                    for i in range(m):
                        dev[a, i] = zt[Q + a, i] - mu
                for a in range(D):
                    for c in range(0 if cross_terms else a, a + 1):
                        acc = 0.0
                        for i in range(m):
                            acc += lpt[k, i] * dev[a, i] * dev[c, i]
                        sc[a, c] = acc
            elif cross_terms:
                t = 0
                for a in range(D):
                    for c in range(a + 1):
                        sc[a, c] = mom[k, t + c] - wb[k] * mean_b[a] * mean_b[c]
                    t += a + 1
            else:
                for a in range(D):
                    sc[a, a] = max(mom[k, a] - wb[k] * mean_b[a] * mean_b[a], 0.0)
            wt = resp_sum[k] + wb[k]
            frac = wb[k] / wt
            cross = resp_sum[k] * frac
            for a in range(D):
                delta_a = mean_b[a] - mean[k, a]
                if cross_terms:
                    for c in range(a + 1):
                        v = sc[a, c] + cross * delta_a * (mean_b[c] - mean[k, c])
                        scatter[k, a, c] += v
                        if c != a:
                            scatter[k, c, a] += v
                else:
                    scatter[k, 0, a] += sc[a, a] + cross * delta_a * delta_a
            for a in range(D):
                mean[k, a] += (mean_b[a] - mean[k, a]) * frac
            resp_sum[k] = wt
    return resp_sum, mean, scatter, ll


@_jit_ordered
def _fused_scores_expanded(X, shift, Gt, log_const, cross_terms, exact, mc, fac, block_rows, labels):
    """Weighted log-densities (n, K), or with ``labels`` their ``argmax_k`` (n,) without the
    (n, K) array; returns ``(log_densities, labels)`` with the other one empty."""
    n, D = X.shape
    K, F = Gt.shape
    out = np.empty((0 if labels else n, K))
    best = np.empty(n if labels else 0, dtype=np.int64)
    zt_full, lpt_full, zt_tail, lpt_tail, scratch = _block_buffers(n, F, K, block_rows)
    top = np.empty(block_rows)
    for start in range(0, n, block_rows):
        m = min(block_rows, n - start)
        zt = zt_full if m == block_rows else zt_tail
        lpt = lpt_full if m == block_rows else lpt_tail
        _expanded_block_log_prob(X, start, shift, Gt, log_const, cross_terms, exact, mc, fac, zt, lpt,
                                 scratch)
        if not labels:
            for i in range(m):
                for k in range(K):
                    out[start + i, k] = lpt[k, i]
            continue
        for i in range(m):
            top[i] = lpt[0, i]
            best[start + i] = 0
        for k in range(1, K):
            for i in range(m):
                if lpt[k, i] > top[i]:
                    top[i] = lpt[k, i]
                    best[start + i] = k
    return out, best


class ExpandedSetup(NamedTuple):
    """The expanded kernels' inputs for one model, passed to them positionally.

    Attributes
    ----------
    shift : (D,)
        The mean of the component means; rows are shifted by it.
    Gt : (K, F)
        Coefficients of the expanded features ``[quadratic terms, x, 1]`` in each
        component's weighted log-density (zero for the ``exact`` components).
    log_const : (K,)
        The constant term of each weighted log-density.
    cross_terms : bool
        Whether the quadratic terms include the cross products ``x_a x_c`` (full and tied
        covariances) or only the squares (diag and spherical).
    exact : (E,) int
        Components computed exactly centered by a loop (means far from the shift).
    mc : (K, D)
        The means, shifted.
    fac : (K, D, D) or (K, 1, D)
        For the exact components: precision Cholesky factors (cross terms) or precisions.
    block_rows : int
        Rows per block.
    """

    shift: np.ndarray
    Gt: np.ndarray
    log_const: np.ndarray
    cross_terms: bool
    exact: np.ndarray
    mc: np.ndarray
    fac: np.ndarray
    block_rows: int


def _expanded_setup(weights, means, prec_chol, covariance_type) -> ExpandedSetup | None:
    """The :class:`ExpandedSetup` of a model for the expanded kernels.

    ``exact`` lists the components whose mean lies more than 1000 standard deviations from
    the shift (measured against the component's smallest variance, which is at least
    ``1 / ||U_k||_F^2``): the kernels compute those exactly centered. None for
    diag/spherical models with K * D below ``_DIAG_GEMM_MIN_WORK`` (the loop kernel is
    faster there) and, for those, when most components would need the exact loop.
    """
    K, D = means.shape
    cross_terms = covariance_type in ("full", "tied")
    if not cross_terms and K * D < _DIAG_GEMM_MIN_WORK:
        return None
    # The setup is float64 whatever the model's dtype (a model fitted on float32 points
    # keeps float32 attributes): one specialization per kernel, the one compiled ahead.
    weights, means, prec_chol = (np.asarray(a, dtype=np.float64)
                                 for a in (weights, means, prec_chol))
    shift = means.mean(axis=0)
    mc = np.ascontiguousarray(means - shift)
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    if cross_terms:
        chol = prec_chol if covariance_type == "full" else np.broadcast_to(prec_chol, (K, D, D))
        fac = _read_only(chol)
        spread = (mc**2).sum(axis=1) * (chol**2).sum(axis=(1, 2))
        prec = np.einsum("kab,kcb->kac", chol, chol)
        rows, cols = np.tril_indices(D)
        quad = -0.5 * prec[:, rows, cols] * np.where(rows == cols, 1.0, 2.0)
        lin = np.einsum("kab,kb->ka", prec, mc)
        log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    else:
        pc = prec_chol if covariance_type == "diag" else np.repeat(prec_chol[:, None], D, axis=1)
        prec = pc**2
        fac = _read_only(prec[:, None, :])
        spread = (mc**2 * prec).sum(axis=1)
        quad = -0.5 * prec
        lin = prec * mc
        log_det = np.log(pc).sum(axis=1)
    exact = np.flatnonzero(~(spread < _EXPANDED_MAX_SPREAD))
    if not cross_terms and 2 * len(exact) > K:
        return None  # the loop kernel centers every component exactly, and is faster
    maha_mu = np.einsum("ka,ka->k", lin, mc)
    maha_mu[exact] = 0.0
    quad[exact] = 0.0
    lin[exact] = 0.0
    Gt = np.ascontiguousarray(np.concatenate([quad, lin, np.zeros((K, 1))], axis=1))
    log_const = -0.5 * D * _LOG_2PI + log_det + log_w - 0.5 * maha_mu
    return ExpandedSetup(shift, Gt, log_const, cross_terms, exact, mc, fac,
                         _expanded_block_rows(Gt.shape[1]))


def _expanded_block_rows(n_expanded: int) -> int:
    """Rows per block of the expanded kernels, from the number of expanded features."""
    return _EXPANDED_BLOCK_ROWS if n_expanded <= _WIDE_FEATURES else _WIDE_BLOCK_ROWS


def _read_only(a, dtype=None):
    """``a`` as a C-contiguous read-only view (a copy only if not contiguous or of another
    ``dtype``). The kernels only read their points and weights, and numba compiles a
    specialization per writable/read-only flag: chunks deserialized on a worker are
    read-only, others are not, so every array is passed one way."""
    view = np.ascontiguousarray(a, dtype=dtype).view()
    view.flags.writeable = False
    return view


def fused_statistics(X, sample_weight, weights, means, prec_chol, covariance_type,
                     scores=None):
    """Compiled equivalent of :func:`distgmm._statistics.chunk_statistics`.

    ``scores``, an (n,) float64 array if given, receives each row's ``log p(x_i)`` (which
    the E-step computes anyway), for the fit's score sketch.

    Returns
    -------
    resp_sum : (K,), means : (K, D), scatter : (K, D, D) or (K, D), log_likelihood : float
    """
    n, D = X.shape
    scores = np.empty(0) if scores is None else scores
    w = _read_only(np.ones(n) if sample_weight is None else sample_weight, np.float64)
    setup = _expanded_setup(weights, means, prec_chol, covariance_type)
    if setup is not None:
        shift = setup.shift
        resp_sum, mean, scatter, ll = _fused_stats_expanded(_read_only(X), w, *setup, scores)
        if not setup.cross_terms:  # diag/spherical: the (K, 1, D) scatter diagonals
            scatter = scatter[:, 0, :]
    else:  # diag/spherical only
        xt, shift, prec, mc, log_const = _prepare(X, weights, means, prec_chol, covariance_type)
        resp_sum, mean, scatter, ll = _fused_stats(xt, w, prec, mc, log_const, scores)
    mean = np.where(resp_sum[:, None] > 0, mean + shift, 0.0)
    return resp_sum, mean, scatter, float(ll)


def fused_log_prob(X, weights, means, prec_chol, covariance_type):
    """Weighted log-probabilities ``log w_k + log N(x_i | k)``, shape (n, K)."""
    setup = _expanded_setup(weights, means, prec_chol, covariance_type)
    if setup is not None:
        return _fused_scores_expanded(_read_only(X), *setup, False)[0]
    xt, _, prec, mc, log_const = _prepare(X, weights, means, prec_chol, covariance_type)
    return _fused_log_prob(xt, prec, mc, log_const)


def fused_labels(X, weights, means, prec_chol, covariance_type):
    """``argmax_k`` of :func:`fused_log_prob`, shape (n,), without the (n, K) array where
    the expanded kernels apply (with the log-density GEMM in float32 and a float64 check,
    see the module docstring, when no component needs the exactly-centered loop)."""
    setup = _expanded_setup(weights, means, prec_chol, covariance_type)
    if setup is None:
        return fused_log_prob(X, weights, means, prec_chol, covariance_type).argmax(axis=1)
    X = _read_only(X)
    if setup.cross_terms or len(setup.exact):
        return _fused_scores_expanded(X, *setup, True)[1]
    return _labels_expanded32(*_labels32_arguments(X, setup))


def _labels32_arguments(X, setup: ExpandedSetup) -> tuple:
    """:func:`_labels_expanded32`'s arguments: with, per component, the bound on a float32
    value's error per unit of ``|z_i|``."""
    Gt = setup.Gt
    err = _LABEL32_SLACK * (Gt.shape[1] + 6) * 2.0**-24 * np.sqrt((Gt * Gt).sum(axis=1))
    return (X, setup.shift, Gt, Gt.astype(np.float32), setup.log_const, False,
            setup.block_rows, err)


@_jit_ordered
def _labels_expanded32(X, shift, Gt, Gt32, log_const, cross_terms, block_rows, err):
    """Labels of ``X`` with the float32 GEMM and the float64 check (module docstring)."""
    n, D = X.shape
    K, F = Gt.shape
    Q = F - D - 1
    best = np.empty(n, dtype=np.int64)
    tail = n % block_rows
    z32_full, z32_tail = np.empty((F, block_rows), np.float32), np.empty((F, tail), np.float32)
    z32_full[F - 1] = 1.0
    z32_tail[F - 1] = 1.0
    l32_full, l32_tail = np.empty((K, block_rows), np.float32), np.empty((K, tail), np.float32)
    # Features go straight into float32 for small D; for large D they are made in float64
    # and converted (see _FLOAT32_DIRECT_MAX_FEATURES).
    via64 = D > _FLOAT32_DIRECT_MAX_FEATURES
    zt_full, _, zt_tail, _, _ = _block_buffers(n if via64 else 0, F, K, block_rows if via64 else 1)
    top, up1, up2, norm2 = np.empty(block_rows), np.empty(block_rows), np.empty(block_rows), np.empty(block_rows)
    winners, up_k = np.empty(block_rows, dtype=np.int64), np.empty(block_rows, dtype=np.int64)
    row = np.empty(F)
    for start in range(0, n, block_rows):
        m = min(block_rows, n - start)
        z32 = z32_full if m == block_rows else z32_tail
        l32 = l32_full if m == block_rows else l32_tail
        for i in range(m):
            norm2[i] = 0.0
        if via64:
            zt = zt_full if m == block_rows else zt_tail
            _expanded_features(X, start, shift, cross_terms, zt)
            for f in range(F):
                for i in range(m):
                    v = zt[f, i]
                    z32[f, i] = v
                    norm2[i] += v * v
        else:
            _expanded_features(X, start, shift, cross_terms, z32)  # products of rounded x - shift
            for f in range(F):
                for i in range(m):
                    v = np.float64(z32[f, i])
                    norm2[i] += v * v
        np.dot(Gt32, z32, l32)
        # One branch-free sweep along rows (it vectorises): the best value and its component,
        # and the two largest upper bounds ``v_k + err_k * |z_i|`` with the first one's
        # component. The winner is certain when it is also the first upper bound and its
        # lower bound clears the second upper bound. A NaN fails that test: redone.
        for i in range(m):
            r = math.sqrt(norm2[i])
            norm2[i] = r
            v = np.float64(l32[0, i]) + log_const[0]
            top[i] = v
            winners[i] = 0
            up1[i] = v + err[0] * r
            up2[i] = -np.inf
            up_k[i] = 0
        for k in range(1, K):
            c = log_const[k]
            e = err[k]
            for i in range(m):
                v = np.float64(l32[k, i]) + c
                t = top[i]
                winners[i] = k if v > t else winners[i]
                top[i] = v if v > t else t
                u = v + e * norm2[i]
                u1 = up1[i]
                lower = u1 if u1 < u else u
                up_k[i] = k if u > u1 else up_k[i]
                up1[i] = u if u > u1 else u1
                up2[i] = up2[i] if up2[i] > lower else lower
        for i in range(m):
            best[start + i] = winners[i]
        for i in range(m):
            w = winners[i]
            if w == up_k[i] and top[i] - err[w] * norm2[i] > up2[i]:
                continue
            # Too close to call in float32 (or not finite): this row's float64 log-densities,
            # from its float64 features (in _expanded_features' order).
            for a in range(D):
                row[Q + a] = X[start + i, a] - shift[a]
            t = 0
            for a in range(D):
                for c in range(a + 1 if cross_terms else 1):
                    row[t] = row[Q + a] * row[Q + (c if cross_terms else a)]
                    t += 1
            row[F - 1] = 1.0
            winner, score = 0, -np.inf
            for k in range(K):
                v = 0.0
                for f in range(F):
                    v += Gt[k, f] * row[f]
                v += log_const[k]
                if v > score:
                    winner, score = k, v
            best[start + i] = winner
    return best


def fused_row_moments(X):
    """Validation moments of a block (n, D) in two sweeps, without float64 copies.

    Returns ``(finite, mean, m2)``: the number of rows whose values are all finite, and
    the per-feature mean (D,) and centered sum of squares (D,) of those rows, accumulated
    in float64 (what :func:`distgmm._statistics.chunk_summary` computes with NumPy, which
    takes four full-size temporaries and 15-20x longer).
    """
    return _row_moments(_read_only(X))


@_jit_ordered
def _row_moments(X):
    n, D = X.shape
    total = np.zeros(D)
    ok = np.empty(n, dtype=np.bool_)
    finite = 0
    for i in range(n):
        good = True
        for a in range(D):
            if not math.isfinite(X[i, a]):
                good = False
        ok[i] = good
        if good:
            finite += 1
            for a in range(D):
                total[a] += X[i, a]
    mean = total / max(finite, 1)
    m2 = np.zeros(D)
    for i in range(n):
        if ok[i]:
            for a in range(D):
                d = np.float64(X[i, a]) - mean[a]
                m2[a] += d * d
    return finite, mean, m2


# ------------------------------------------------------------------ compilation
#
# numba compiles each kernel for each type of arguments the first time it is called, and
# caches the machine code on disk (``cache=True``: ``__pycache__`` beside this file, or
# NUMBA_CACHE_DIR) for this machine's CPU and this file's version. The first run on a
# machine therefore compiles for seconds per kernel. Before a fit, the engine asks every
# worker which of the kernels the fit calls (:func:`fit_kernels`) it lacks
# (:func:`missing_kernels`), says so in one line, and shares their compilation out between
# the workers of a machine (:func:`compile_kernels`), which then load each other's work
# from the cache. Other kernels (labels) compile when first called.


class KernelCall(NamedTuple):
    """One compiled specialization: a kernel and arguments of the types the wrappers above
    give it (tiny arrays), and the seconds it took to compile on one core of the machine
    the benchmarks ran on (``bench/README.md``), for the estimate the engine logs."""

    name: str
    dtype: str | None  # of the points; None for kernels that take float64 copies
    kernel: object
    arguments: tuple
    seconds: float
    on_client: bool = False  # called by the process driving the fit, not by the workers


@functools.cache
def kernel_calls() -> list[KernelCall]:
    """Every specialization the wrappers compile: the kernels for float32 and float64
    points (``dtype``), and the loop kernels, which take float64 copies (``dtype`` None).
    Listed by dtype, so that consecutive calls share the kernels they call."""
    rng = np.random.default_rng(0)
    D, n = 2, 8
    means = rng.normal(size=(16, D))
    full = _expanded_setup(np.full(2, 0.5), means[:2], np.tile(np.eye(D), (2, 1, 1)), "full")
    diag = _expanded_setup(np.full(16, 1 / 16), means, np.ones((16, D)), "diag")
    w = _read_only(np.ones(n))
    scores = np.empty(0)  # the E-steps' optional per-row log-likelihoods (same type either way)
    calls = []
    for dtype, first in (("float32", 0.6), ("float64", 0.0)):
        X = _read_only(rng.normal(size=(n, D)), dtype)
        calls += [  # ``first``: numba's own start-up, paid by the first compilation
            KernelCall("validation", dtype, _row_moments, (X,), 0.4 + first),
            KernelCall("E-step", dtype, _fused_stats_expanded, (X, w, *full, scores), 3.5),
            KernelCall("log-densities and labels", dtype, _fused_scores_expanded,
                       (X, *full, True), 1.0),
            KernelCall("float32 labels", dtype, _labels_expanded32,
                       _labels32_arguments(X, diag), 2.0)]
    xt, _, prec, mc, log_const = _prepare(rng.normal(size=(n, D)), np.full(2, 0.5),
                                          means[:2], np.ones((2, D)), "diag")
    calls += [KernelCall("small diag E-step", None, _fused_stats,
                         (xt, w, prec, mc, log_const, scores), 1.8),
              KernelCall("small diag log-densities", None, _fused_log_prob,
                         (xt, prec, mc, log_const), 0.3)]
    from distgmm._kmeans import kernel_arguments  # it imports this module's _jit

    calls += [KernelCall("sample k-means", None, kernel, arguments, seconds, on_client=True)
              for kernel, arguments, seconds in kernel_arguments()]
    return calls


def _is_compiled(call: KernelCall) -> bool:
    """Whether ``call``'s specialization is loaded in this process or in numba's cache for
    this machine (read from the cache's index, without loading it). When numba's cache
    internals cannot be read (another numba version), say yes: the message is a courtesy,
    and compilation happens anyway when a kernel is first called."""
    kernel = call.kernel
    signature = tuple(kernel.typeof_pyval(a) for a in call.arguments)
    if signature in kernel.overloads:
        return True
    try:
        cache = kernel._cache
        key = cache._index_key(signature, kernel.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - numba internals; see the docstring
        return True


def fit_kernels(dtype: str, models: list[tuple[str, int, int]],
                sample_kmeans: bool = False) -> list[int]:
    """Indices in :func:`kernel_calls` of the specializations a fit of points of ``dtype``
    calls, for models given as ``(covariance_type, n_components, n_features)``: the
    validation moments, and the E-step kernels the models take (the expanded kernel, or
    the loop kernel for diag and spherical models with K * D below _DIAG_GEMM_MIN_WORK);
    with ``sample_kmeans``, the k-means of the ``kmeans`` start's sample
    (:mod:`distgmm._kmeans`), which the client runs: compiled by the workers with the
    rest, it is in the cache the client loads when they share its machine."""
    wanted = {("validation", dtype)}
    if sample_kmeans:
        wanted.add(("sample k-means", None))
    for covariance_type, n_components, n_features in models:
        loop = (covariance_type in ("diag", "spherical")
                and n_components * n_features < _DIAG_GEMM_MIN_WORK)
        wanted.add(("small diag E-step", None) if loop else ("E-step", dtype))
    return [i for i, call in enumerate(kernel_calls()) if (call.name, call.dtype) in wanted]


def describe_kernels(indices: list[int]) -> str:
    """What the specializations at ``indices`` are, in a few words (for a log line)."""
    calls = [kernel_calls()[i] for i in sorted(indices)]
    typed = ", ".join(dict.fromkeys(call.name for call in calls if call.dtype))
    dtypes = " and ".join(dict.fromkeys(call.dtype for call in calls if call.dtype))
    untyped = list(dict.fromkeys(call.name for call in calls if not call.dtype))
    return ", ".join(([f"{typed} for {dtypes} points"] if typed else []) + untyped)


def missing_kernels(indices: list[int] | None = None) -> list[int]:
    """Those of ``indices`` (default: all) in :func:`kernel_calls` whose specializations
    this process would compile (none when the compiled kernels are not used)."""
    if not use_fused():
        return []
    calls = kernel_calls()
    return [i for i in (range(len(calls)) if indices is None else indices)
            if not _is_compiled(calls[i])]


def compile_kernels(indices: list[int]) -> None:
    """Compile (or load from numba's cache) the specializations at ``indices`` of
    :func:`kernel_calls`, by calling them on their tiny arguments."""
    calls = kernel_calls()
    for i in indices:
        call = calls[i]
        call.kernel(*call.arguments)
