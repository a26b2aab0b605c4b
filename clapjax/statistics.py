"""Segment magnitudes and per-video statistics ``x_i = [σ_i, H_i]`` (SPEC §2.1).

Pure jnp pieces (jit/vmap-able, O(S) on the packed layout):
  * :func:`segment_magnitude` — ``z`` per segment.
  * :func:`sigma_from_magnitude` — ``σ_i`` from ``z``.
  * :func:`entropy_from_eigenvalues`, :func:`entropy_from_variances` — ``H_i``
    from a covariance spectrum / diagonal.
  * :func:`padded_video_statistics` — ``[σ, H]`` of videos padded to a common
    length ``[B, b, ...]`` (Gram route).
  * :func:`diagonal_entropy` — the reference's diagonal entropy on packed rows.

Host driver :func:`compute_statistics` / :func:`video_statistics` streams any
array-like feature store (``np.ndarray``, ``np.memmap``, ``jax.Array``) of shape
``[S, D]`` or ``[S, C, D]`` video by video:
  * videos with ``m <= D`` are grouped into length buckets
    (:func:`bucket_sizes`: octave steps up to 256, quarter-octave steps above,
    capped at ``D``) and padded inside the bucket with masked rows; their spectrum comes from the ``b×b`` Gram matrix of the
    centred features (``eig(Cov) = eig(X_c X_cᵀ)/(m-1)`` plus zeros). Masked
    rows are zero after centring and only add zero eigenvalues, which add
    nothing to the entropy. One compile per bucket shape.
  * videos with ``m > D`` accumulate the ``D×D`` covariance over fixed-size row
    chunks (one compile), shifted by their first chunk's mean for float32
    accuracy, then take one ``D×D`` eigendecomposition.
  Memory stays at a few chunks (``chunk_bytes``) plus ``D×D`` matrices.
  Eigenvalues (no eigenvectors) are computed by host LAPACK in a worker
  thread on CPU (overlapping XLA's Gram matmuls), by ``jnp.linalg.eigvalsh``
  on accelerators (``eigen_backend``). σ is computed on the host from ``z``
  (float64 twin of :func:`sigma_from_magnitude`).

Defined values for short videos (never NaN/inf):
  * ``m = 1``: covariance ≡ 0, so ``H = 0`` (spectral entropies) and
    ``D · (-c ln c)`` with ``c = diag_zero_value`` for ``diag_reference``;
    ``σ = 0`` (no differences).
  * ``m = 2``: one difference, its ddof-1 std is undefined → ``σ = 0``;
    ``max_diff`` uses the single difference. The covariance has rank 1, so the
    trace-normalised entropy is 0.
  * Constant features: zero covariance → ``H = 0`` (spectral).

Numerical contract of ``H`` (float32 data, float32 or float64 eigensolver):
  * Exactly constant feature columns (``max == min`` over the video's rows,
    e.g. a frozen or black camera feed) get exactly zero covariance rows and
    columns, although the float32 mean of identical values differs from them
    by an ulp. A constant video therefore has ``H = 0`` (spectral), and the
    diagonal (reference) entropy applies the released code's
    ``diag_zero_value`` (1e-9) to those columns, as ``np.cov`` in float64
    gives exactly 0 there (released code: ``-Σ_d C_dd ln C_dd``, zeros → 1e-9).
  * Eigenvalues at or below the data's float32 noise floor
    (:func:`eigenvalue_noise_floor`: ``eps32² Σ_j ‖f_j‖² / (m-1)``, at most
    ``≈ D (eps32 · max|f|)²``: the largest covariance eigenvalue that
    rounding every feature value by ``eps32 · |f|`` can create) are set to
    0. Unlike a cut-off relative to ``λ_max``, this keeps every eigenvalue
    the data resolves, for spectra decaying over many decades (long 2048-d
    videos). The floor comes from the segment magnitudes ``z`` the kernels
    compute anyway (no extra pass over the features).
    Measured against float64 ``eigh`` of the float64 covariance: |ΔH| below
    1e-4 for D = 2048 spectra decaying over 1e10-1e17 (see tests).
  * A float32 eigensolver (``eigen_backend="jax"``, the default on
    accelerators, and :func:`padded_video_statistics`) adds its own absolute
    eigenvalue error, ~``eps32 · λ_max``; the host solver (float64 LAPACK on
    the float32 matrix) resolves eigenvalues far below that.
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clapjax import packed
from clapjax.options import PseudoLabelOptions
from clapjax.packed import Layout

_HIGHEST = jax.lax.Precision.HIGHEST
_EPS32 = float(np.finfo(np.float32).eps)
#: Default host chunk size of the streaming driver (bytes of float32 rows).
DEFAULT_CHUNK_BYTES = 64 * 2**20


class VideoStatistics(NamedTuple):
    """Output of :func:`compute_statistics`.

    Attributes:
      stats: ``[N, 2] float32`` per-video ``[σ_i, H_i]`` (0 for padding videos).
      magnitude: ``[S] float32`` segment magnitudes ``z`` (0 for padding rows).
    """

    stats: np.ndarray
    magnitude: np.ndarray


# ---------------------------------------------------------------- pure jnp


def crop_mean(features: ArrayLike, has_crops: bool) -> jax.Array:
    """``[..., C, D] -> [..., D]`` mean over crops (identity if no crop axis)."""
    features = jnp.asarray(features, jnp.float32)
    return features.mean(axis=-2) if has_crops else features


def _magnitude(features: jax.Array, has_crops: bool, opts: PseudoLabelOptions) -> jax.Array:
    features = jnp.asarray(features, jnp.float32)
    if opts.magnitude == "l2_of_mean":
        return jnp.linalg.norm(crop_mean(features, has_crops), axis=-1)
    squared = jnp.sum(features * features, axis=-1)
    return squared.mean(axis=-1) if has_crops else squared


def segment_magnitude(features: ArrayLike, opts: PseudoLabelOptions = PseudoLabelOptions()) -> jax.Array:
    """Segment magnitude ``z``.

    Args:
      features: ``[S, D]`` or ``[S, C, D]`` segment features.
      opts: ``opts.magnitude`` = ``"l2_of_mean"`` (``‖mean_c f‖₂``) or
        ``"mean_sq_norm"`` (``mean_c ‖f_c‖₂²``; ``‖f‖₂²`` for ``[S, D]``).

    Returns:
      ``[S] float32``.
    """
    features = jnp.asarray(features)
    if features.ndim not in (2, 3):
        raise ValueError(
            f"features must be [S, D] or [S, C, D]; got shape {tuple(features.shape)}"
        )
    return _magnitude(features, features.ndim == 3, opts)


def sigma_from_magnitude(z: ArrayLike, layout: Layout, opts: PseudoLabelOptions = PseudoLabelOptions()) -> jax.Array:
    """``σ_i`` of every video from segment magnitudes.

    ``"std_diff"``: std (ddof 1) of ``z_j - z_{j+1}`` (0 if ``m <= 2``).
    ``"max_diff"``: ``max_j z_{j+1} - z_j`` (0 if ``m == 1``).

    Args:
      z: ``[S]`` magnitudes (padding rows ignored).
      layout: packed layout with ``N`` videos.

    Returns:
      ``[N] float32`` (0 for padding videos).
    """
    z = jnp.asarray(z, jnp.float32)
    nxt = jnp.concatenate([z[1:], z[-1:]])
    row_len = packed.per_segment(layout.lengths, layout, fill=0)
    has_next = layout.segment_mask & (layout.position + 1 < row_len)
    seg = layout.video_of_segment
    n = layout.num_videos
    count = jax.ops.segment_sum(has_next.astype(jnp.int32), seg, num_segments=n)
    if opts.sigma == "std_diff":
        diff = jnp.where(has_next, z - nxt, 0.0)
        mean = jax.ops.segment_sum(diff, seg, num_segments=n) / jnp.maximum(count, 1)
        dev = jnp.where(has_next, diff - packed.per_segment(mean, layout), 0.0)
        var = jax.ops.segment_sum(dev * dev, seg, num_segments=n) / jnp.maximum(count - 1, 1)
        return jnp.where(count >= 2, jnp.sqrt(var), 0.0)
    diff = jnp.where(has_next, nxt - z, -jnp.inf)
    largest = jax.ops.segment_max(diff, seg, num_segments=n)
    return jnp.where(count >= 1, largest, 0.0)


def eigenvalue_noise_floor(sum_sq_norms: ArrayLike, num_rows: ArrayLike) -> jax.Array:
    """Largest covariance eigenvalue that float32 rounding of the data can make.

    Rounding each feature value ``f_jd`` by at most ``eps32 · |f_jd|`` adds a
    noise matrix ``N`` with ``‖N‖₂² <= ‖N‖_F² <= eps32² Σ_j ‖f_j‖²``, so its
    covariance eigenvalues are at most ``eps32² Σ_j ‖f_j‖² / (m - 1)``
    (``<= m D (eps32 · max|f|)² / (m - 1)``). Eigenvalues below it are not
    resolved by float32 data.

    Args:
      sum_sq_norms: ``[...]`` ``Σ_j ‖f_j‖²`` over each video's crop-mean
        feature rows (or an upper bound: ``Σ_j z_j`` for ``mean_sq_norm``).
      num_rows: ``[...]`` segments per video ``m``.

    Returns:
      ``[...] float32`` floor in covariance units (0 where ``m < 2``).
    """
    m = jnp.asarray(num_rows, jnp.float32)
    total = jnp.asarray(sum_sq_norms, jnp.float32)
    return jnp.where(m >= 2, _EPS32 * _EPS32 * total / jnp.maximum(m - 1.0, 1.0), 0.0)


def _squared_norm_bound(z: jax.Array, opts: PseudoLabelOptions) -> jax.Array:
    """``‖f_j‖²`` of the crop-mean row (or an upper bound) from its magnitude ``z``.

    ``l2_of_mean``: ``z = ‖mean_c f‖`` exactly. ``mean_sq_norm``:
    ``z = mean_c ‖f_c‖² >= ‖mean_c f_c‖²`` (Jensen).
    """
    return z * z if opts.magnitude == "l2_of_mean" else z


def entropy_from_eigenvalues(
    eigenvalues: ArrayLike,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
    noise_floor: ArrayLike = 0.0,
) -> jax.Array:
    """Von Neumann entropy of covariance spectra (paper Eq. 3-4).

    Args:
      eigenvalues: ``[..., n]`` eigenvalues of covariance matrices (any order;
        zeros and small negative round-off allowed).
      opts: ``"trace_normalised"`` → ``-Σ p ln p``, ``p = λ / Σλ`` (0 for a
        zero matrix); ``"eq4_raw"`` → ``-Σ λ ln λ`` (``0 ln 0 = 0``).
      noise_floor: ``[...]`` eigenvalues ``<=`` it count as 0 (default 0:
        keep every positive eigenvalue); :func:`compute_statistics` passes
        :func:`eigenvalue_noise_floor` of each video.

    Returns:
      ``[...] float32``.
    """
    lam = jnp.maximum(jnp.asarray(eigenvalues, jnp.float32), 0.0)
    floor = jnp.asarray(noise_floor, jnp.float32)[..., None]
    lam = jnp.where(lam > floor, lam, 0.0)
    if opts.entropy == "trace_normalised":
        # p_i = (λ_i/λ_max) / (1 + r), r = Σ_{i≠max} λ_i / λ_max, with
        # ln p_i = ln(λ_i/λ_max) - log1p(r): the dominant term -p ln p ≈ r
        # keeps its relative accuracy when H is tiny (nearly rank-1 spectra),
        # where ln(λ/Σλ) in float32 would be off by ~eps.
        top = jnp.argmax(lam, axis=-1)[..., None]
        largest = jnp.take_along_axis(lam, top, axis=-1)
        others = jnp.where(jnp.arange(lam.shape[-1]) == top, 0.0, lam)
        scale = jnp.where(largest > 0, largest, 1.0)
        ratio = lam / scale
        log_norm = jnp.log1p(others.sum(axis=-1, keepdims=True) / scale)
        p = ratio * jnp.exp(-log_norm)
        log_p = jnp.log(jnp.where(ratio > 0, ratio, 1.0)) - log_norm
        return 0.0 - jnp.sum(jnp.where(ratio > 0, p * log_p, 0.0), axis=-1)
    if opts.entropy != "eq4_raw":
        raise ValueError(f"entropy {opts.entropy!r} is not a spectral entropy")
    safe = jnp.where(lam > 0, lam, 1.0)
    return 0.0 - jnp.sum(jnp.where(lam > 0, lam * jnp.log(safe), 0.0), axis=-1)


def entropy_from_variances(variances: ArrayLike, opts: PseudoLabelOptions = PseudoLabelOptions()) -> jax.Array:
    """Reference diagonal entropy ``-Σ_d c_d ln c_d``, ``c_d = 0 → diag_zero_value``.

    Args:
      variances: ``[..., D]`` covariance diagonals (ddof 1).
    """
    var = jnp.asarray(variances, jnp.float32)
    c = jnp.where(var == 0, jnp.float32(opts.diag_zero_value), jnp.maximum(var, 0.0))
    safe = jnp.where(c > 0, c, 1.0)
    return 0.0 - jnp.sum(jnp.where(c > 0, c * jnp.log(safe), 0.0), axis=-1)


def _entropy_of_centred(xc: jax.Array, lengths: jax.Array, floor: jax.Array, opts: PseudoLabelOptions) -> jax.Array:
    """``H`` of videos ``xc [B, b, D]`` already centred, masked rows and
    constant columns zeroed; ``floor [B]`` eigenvalue noise floors."""
    denom = jnp.maximum(lengths - 1, 1).astype(jnp.float32)
    if opts.entropy == "diag_reference":
        var = jnp.sum(xc * xc, axis=1) / denom[:, None]
        return entropy_from_variances(var, opts)
    gram = jnp.einsum("bid,bjd->bij", xc, xc, precision=_HIGHEST) / denom[:, None, None]
    return entropy_from_eigenvalues(jnp.linalg.eigvalsh(gram), opts, floor)


def padded_video_statistics(
    features: ArrayLike, lengths: ArrayLike, opts: PseudoLabelOptions = PseudoLabelOptions()
) -> tuple[jax.Array, jax.Array]:
    """``[σ, H]`` and ``z`` of videos padded to a common length (Gram route).

    Rows at positions ``>= lengths[b]`` are ignored (their values may be
    anything finite or not). Cost ``O(B b² D + B b³)``: use for ``b <= D``.

    Args:
      features: ``[B, b, D]`` or ``[B, b, C, D]``.
      lengths: ``[B]`` int valid rows per video (0 = empty video).

    Returns:
      ``stats [B, 2] float32`` and ``z [B, b] float32`` (0 on masked rows).
    """
    features = jnp.asarray(features, jnp.float32)
    if features.ndim not in (3, 4):
        raise ValueError(f"padded features must be [B, b, D] or [B, b, C, D]; got {features.shape}")
    lengths = jnp.asarray(lengths, jnp.int32)
    b = features.shape[1]
    xc, z, floor = _centred_padded(features, lengths, opts)
    entropy = _entropy_of_centred(xc, lengths, floor, opts)
    layout = _dense_layout(b, lengths)
    sigma = sigma_from_magnitude(z.reshape(-1), layout, opts)
    return jnp.stack([sigma, entropy], axis=-1), z


def _dense_layout(b: int, lengths: jax.Array) -> Layout:
    """Layout of ``[B, b]`` rows flattened, video k owning rows ``k*b .. k*b+m_k-1``."""
    nb = lengths.shape[0]
    rows = jnp.arange(nb * b, dtype=jnp.int32)
    video = rows // b
    position = rows % b
    mask = position < lengths[video]
    return Layout(
        offsets=jnp.arange(nb, dtype=jnp.int32) * b,
        lengths=lengths,
        video_of_segment=jnp.where(mask, video, nb).astype(jnp.int32),
        position=jnp.where(mask, position, 0).astype(jnp.int32),
        segment_mask=mask,
    )


def diagonal_entropy(features: ArrayLike, layout: Layout, opts: PseudoLabelOptions = PseudoLabelOptions()) -> jax.Array:
    """Reference ``H_i = -Σ_d C_dd ln C_dd`` on packed rows, O(S·D).

    Args:
      features: ``[S, D]`` or ``[S, C, D]`` (crop-mean is taken).

    Returns:
      ``[N] float32``.
    """
    features = jnp.asarray(features, jnp.float32)
    f = crop_mean(features, features.ndim == 3)
    rows = layout.segment_mask[:, None]
    f = jnp.where(rows, f, 0.0)
    seg = layout.video_of_segment
    n = layout.num_videos
    m = jnp.maximum(layout.lengths, 1).astype(jnp.float32)
    mean = jax.ops.segment_sum(f, seg, num_segments=n) / m[:, None]
    dev = jnp.where(rows, f - packed.per_segment(mean, layout), 0.0)
    var = jax.ops.segment_sum(dev * dev, seg, num_segments=n) / jnp.maximum(layout.lengths - 1, 1)[:, None]
    # Exactly constant columns (m = 1 included) have variance exactly 0.
    high = jax.ops.segment_max(jnp.where(rows, f, -jnp.inf), seg, num_segments=n)
    low = jax.ops.segment_min(jnp.where(rows, f, jnp.inf), seg, num_segments=n)
    var = jnp.where(high == low, 0.0, var)
    entropy = entropy_from_variances(var, opts)
    return jnp.where(layout.lengths > 0, entropy, 0.0)


# ------------------------------------------------------- jitted host kernels


def _centred_padded(features: jax.Array, lengths: jax.Array, opts: PseudoLabelOptions):
    """Centred crop-mean features ``[B, b, D]`` (masked rows and constant
    columns 0), ``z [B, b]`` and the eigenvalue noise floor ``[B]``."""
    has_crops = features.ndim == 4
    b = features.shape[1]
    rows = jnp.arange(b)[None, :] < lengths[:, None]
    raw = jnp.where(rows[(...,) + (None,) * (features.ndim - 2)], features, 0.0)
    z = jnp.where(rows, _magnitude(raw, has_crops, opts), 0.0)
    f = crop_mean(raw, has_crops)
    # The float32 mean of identical values can differ from them by an ulp.
    # Shifting by the first row first makes exactly constant columns exactly
    # 0 (x - y == 0 iff x == y), and their mean then too.
    dev = jnp.where(rows[..., None], f - f[:, :1, :], 0.0)
    if has_crops:
        # The crop mean ends in a multiply, which XLA may contract with the
        # subtraction into an FMA (f_j - f_0 = rounding error of f_0, not 0).
        # Comparisons are exact: zero columns with max == min explicitly.
        high = jnp.max(jnp.where(rows[..., None], f, -jnp.inf), axis=1)
        low = jnp.min(jnp.where(rows[..., None], f, jnp.inf), axis=1)
        dev = jnp.where((high > low)[:, None, :], dev, 0.0)
    mean = dev.sum(axis=1) / jnp.maximum(lengths, 1)[:, None].astype(jnp.float32)
    xc = jnp.where(rows[..., None], dev - mean[:, None, :], 0.0)
    floor = eigenvalue_noise_floor(jnp.sum(_squared_norm_bound(z, opts), axis=1), lengths)
    return xc, z, floor


@functools.partial(jax.jit, static_argnames=("opts", "host_eigen"))
def _bucket_kernel(features, lengths, opts, host_eigen):
    """``(entropy [B] or covariance Gram [B, b, b], noise floor [B], z [B, b])``."""
    xc, z, floor = _centred_padded(features, lengths, opts)
    if opts.entropy == "diag_reference" or not host_eigen:
        return _entropy_of_centred(xc, lengths, floor, opts), floor, z
    denom = jnp.maximum(lengths - 1, 1).astype(jnp.float32)
    gram = jnp.einsum("bid,bjd->bij", xc, xc, precision=_HIGHEST) / denom[:, None, None]
    return gram, floor, z


def _host_entropy_from_eigenvalues(lam: np.ndarray, floors: np.ndarray, opts: PseudoLabelOptions) -> np.ndarray:
    """float64 numpy twin of :func:`entropy_from_eigenvalues` (same formula and
    floor; no compile per batch shape)."""
    lam = np.maximum(lam, 0.0)
    lam = np.where(lam > np.asarray(floors, np.float64)[..., None], lam, 0.0)
    if opts.entropy == "eq4_raw":
        return 0.0 - np.sum(np.where(lam > 0, lam * np.log(np.where(lam > 0, lam, 1.0)), 0.0), axis=-1)
    top = np.argmax(lam, axis=-1)[..., None]
    largest = np.take_along_axis(lam, top, axis=-1)
    others = np.where(np.arange(lam.shape[-1]) == top, 0.0, lam)
    scale = np.where(largest > 0, largest, 1.0)
    ratio = lam / scale
    log_norm = np.log1p(others.sum(axis=-1, keepdims=True) / scale)
    log_p = np.log(np.where(ratio > 0, ratio, 1.0)) - log_norm
    return 0.0 - np.sum(np.where(ratio > 0, ratio * np.exp(-log_norm) * log_p, 0.0), axis=-1)


def _host_entropy(matrices: Any, floors: Any, opts: PseudoLabelOptions) -> np.ndarray:
    """Entropy of symmetric ``[..., n, n]`` matrices via LAPACK ``syevd`` without
    eigenvectors (numpy, float64): 2-3x faster than ``jnp.linalg.eigvalsh`` on
    CPU, which always computes eigenvectors. ``floors [...]``: noise floors."""
    eig = np.linalg.eigvalsh(np.asarray(matrices, np.float64))
    return _host_entropy_from_eigenvalues(eig, floors, opts).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("has_crops",))
def _chunk_mean(chunk, n_valid, has_crops):
    rows = jnp.arange(chunk.shape[0]) < n_valid
    f = jnp.where(rows[:, None], crop_mean(chunk, has_crops), 0.0)
    return f.sum(axis=0) / jnp.maximum(n_valid, 1).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("has_crops", "opts"))
def _covariance_chunk(state, chunk, n_valid, shift, has_crops, opts):
    """Adds one chunk of one long video to (Σ(x-s), Σ(x-s)(x-s)ᵀ or its
    diagonal, column min, column max of the crop-mean features, Σ‖f_j‖²
    bound)."""
    first, second, low, high, sq = state
    rows = jnp.arange(chunk.shape[0]) < n_valid
    mask = rows[(...,) + (None,) * (chunk.ndim - 1)]
    chunk = jnp.where(mask, chunk, 0.0)
    z = jnp.where(rows, _magnitude(chunk, has_crops, opts), 0.0)
    f = crop_mean(chunk, has_crops)
    low = jnp.minimum(low, jnp.min(jnp.where(rows[:, None], f, jnp.inf), axis=0))
    high = jnp.maximum(high, jnp.max(jnp.where(rows[:, None], f, -jnp.inf), axis=0))
    dev = jnp.where(rows[:, None], f - shift, 0.0)
    first = first + dev.sum(axis=0)
    if opts.entropy == "diag_reference":
        second = second + jnp.sum(dev * dev, axis=0)
    else:
        second = second + jnp.matmul(dev.T, dev, precision=_HIGHEST)
    sq = sq + jnp.sum(_squared_norm_bound(z, opts))
    return (first, second, low, high, sq), z


@functools.partial(jax.jit, static_argnames=("opts", "host_eigen"))
def _covariance_entropy(state, m, opts, host_eigen):
    """Entropy of one long video, or ``(D×D covariance, noise floor)`` if
    ``host_eigen``. Exactly constant columns get exactly zero covariance."""
    first, second, low, high, sq = state
    varying = high > low  # exactly constant columns (the shift need not be exact)
    floor = eigenvalue_noise_floor(sq, m)
    m = jnp.asarray(m, jnp.float32)
    mean_dev = first / m
    if opts.entropy == "diag_reference":
        var = jnp.maximum(second - m * mean_dev * mean_dev, 0.0) / (m - 1)
        return entropy_from_variances(jnp.where(varying, var, 0.0), opts)
    cov = (second - m * jnp.outer(mean_dev, mean_dev)) / (m - 1)
    cov = jnp.where(varying[:, None] & varying[None, :], 0.5 * (cov + cov.T), 0.0)
    if host_eigen:
        return cov, floor
    return entropy_from_eigenvalues(jnp.linalg.eigvalsh(cov), opts, floor)


def _host_sigma(z: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, opts: PseudoLabelOptions) -> np.ndarray:
    """Host twin of :func:`sigma_from_magnitude` (float64, O(S)); avoids one
    compile per total segment count in the streaming driver."""
    sigma = np.zeros(len(lengths), np.float32)
    for i in np.flatnonzero(lengths >= 2):
        diff = np.diff(z[offsets[i] : offsets[i] + lengths[i]].astype(np.float64))
        if opts.sigma == "std_diff":
            sigma[i] = np.std(diff, ddof=1) if diff.size >= 2 else 0.0
        else:
            sigma[i] = diff.max()
    return sigma


# ------------------------------------------------------------- host driver


def bucket_sizes(feature_dim: int, smallest: int = 8) -> list[int]:
    """Gram bucket lengths, capped at ``D``.

    Octave steps ``2^k`` and ``1.5·2^k`` up to 256, then quarter-octave steps
    (ratio ``2^(1/4)``, rounded up to a multiple of 32) where the ``O(b³)``
    eigendecomposition dominates, so padding costs ~1.3x on average.
    """
    sizes = set()
    k = smallest
    while k < min(feature_dim, 256):
        sizes.add(k)
        if k * 3 // 2 < feature_dim and k >= 4:
            sizes.add(k * 3 // 2)
        k *= 2
    step = 256.0
    while step < feature_dim:
        sizes.add(int(step))
        step = float(-(-int(step * 2 ** 0.25) // 32) * 32)
    sizes = {size for size in sizes if size < feature_dim}
    sizes.add(int(feature_dim))
    return sorted(sizes)


def _host_layout(layout: Layout) -> tuple[np.ndarray, np.ndarray, int]:
    offsets = np.asarray(layout.offsets, np.int64)
    lengths = np.asarray(layout.lengths, np.int64)
    if offsets.ndim != 1:
        raise ValueError(
            "video_statistics takes one participant's layout ([N] fields); "
            f"got offsets of shape {offsets.shape} (loop over stacked participants)"
        )
    return offsets, lengths, int(layout.num_segments)


def _read(features: Any, start: int, stop: int) -> np.ndarray:
    return np.asarray(features[start:stop], dtype=np.float32)


def _check_finite(z: np.ndarray, video: int, start_pos: int) -> None:
    bad = ~np.isfinite(z)
    if bad.any():
        j = int(np.flatnonzero(bad)[0]) + start_pos
        raise ValueError(
            f"video {video}: non-finite (NaN/inf or overflowing) feature values at segment {j}"
        )


def compute_statistics(
    features: Any,
    layout: Layout,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    eigen_backend: str = "auto",
) -> VideoStatistics:
    """Streams features once and returns ``[σ, H]`` per video and ``z`` per row.

    Args:
      features: array-like ``[S, D]`` or ``[S, C, D]`` float (``np.memmap``
        welcome: at most ~3 chunks of ``chunk_bytes`` are in memory at once;
        a ``jax.Array`` is copied to the host once).
      layout: one participant's packed layout (may be padded).
      opts: pseudo-labelling options (magnitude, sigma, entropy).
      chunk_bytes: host batch size in bytes of float32 features.
      eigen_backend: where covariance spectra are computed: ``"numpy"``
        (host LAPACK without eigenvectors, float64), ``"jax"``
        (``jnp.linalg.eigvalsh`` on device) or ``"auto"`` (numpy on the CPU
        backend, jax on accelerators).

    Returns:
      :class:`VideoStatistics` with ``stats [N, 2]`` and ``magnitude [S]``.

    Raises:
      ValueError: wrong shapes, a layout beyond the feature rows, or
        non-finite features (naming the video and segment).
    """
    if isinstance(features, jax.Array):
        # Per-video slices of a device array would compile one slice per length.
        features = np.asarray(features)
    shape = tuple(getattr(features, "shape", ()))
    if len(shape) not in (2, 3):
        raise ValueError(f"features must be [S, D] or [S, C, D]; got shape {shape}")
    has_crops = len(shape) == 3
    feature_dim = int(shape[-1])
    row_shape = tuple(shape[1:])
    offsets, lengths, num_rows = _host_layout(layout)
    real = lengths > 0
    ends = offsets + lengths
    if real.any() and int(ends[real].max()) > shape[0]:
        bad = int(np.flatnonzero(real & (ends > shape[0]))[0])
        raise ValueError(
            f"video {bad} spans rows {offsets[bad]}..{ends[bad] - 1} but features have {shape[0]} rows"
        )
    plan = plan_statistics(lengths, row_shape, chunk_bytes)
    host_eigen = _use_host_eigen(eigen_backend)
    n = lengths.shape[0]
    entropy = np.zeros(n, np.float32)
    z_all = np.zeros(num_rows, np.float32)

    # Host eigendecompositions run in one worker thread (LAPACK releases the
    # GIL) while XLA computes the next Gram/covariance; at most 4 in flight.
    eigen = _HostEigen(opts, entropy) if host_eigen else None

    # Gram route: one compile per bucket shape [B, b, ...].
    pending = []
    try:
        for b, per_batch, members in plan.buckets:
            for lo in range(0, len(members), per_batch):
                batch = members[lo : lo + per_batch]
                buf = np.zeros((per_batch, b) + row_shape, np.float32)
                blen = np.zeros(per_batch, np.int32)
                for k, i in enumerate(batch):
                    buf[k, : lengths[i]] = _read(features, offsets[i], ends[i])
                    blen[k] = lengths[i]
                pending.append((batch, _bucket_kernel(buf, blen, opts, host_eigen)))
                if len(pending) > 1:  # overlap reading the next batch with compute
                    _collect(pending.pop(0), offsets, lengths, entropy, z_all, eigen)
        while pending:
            _collect(pending.pop(0), offsets, lengths, entropy, z_all, eigen)

        # Covariance route: fixed-size chunks, one D×D eigendecomposition per video.
        chunk_rows = plan.chunk_rows
        for i in plan.long:
            o, m = int(offsets[i]), int(lengths[i])
            state = _zero_state(feature_dim, opts)
            shift = None
            for s in range(0, m, chunk_rows):
                n_valid = min(chunk_rows, m - s)
                buf = np.zeros((chunk_rows,) + row_shape, np.float32)
                buf[:n_valid] = _read(features, o + s, o + s + n_valid)
                if shift is None:
                    shift = _chunk_mean(buf, n_valid, has_crops)
                state, z = _covariance_chunk(state, buf, n_valid, shift, has_crops, opts)
                z = np.asarray(z)[:n_valid]
                _check_finite(z, int(i), s)
                z_all[o + s : o + s + n_valid] = z
            final = _covariance_entropy(state, m, opts, host_eigen)
            if host_eigen and opts.entropy != "diag_reference":
                cov, floor = final
                eigen.submit(np.asarray([i]), np.asarray(cov)[None], np.asarray(floor)[None])
            else:
                entropy[i] = float(final)
        if eigen is not None:
            eigen.finish()
    finally:
        if eigen is not None:
            eigen.close()

    sigma = _host_sigma(z_all, offsets, lengths, opts)
    stats = np.stack([sigma, entropy], axis=-1).astype(np.float32)
    stats[~real] = 0.0
    if not np.isfinite(stats).all():
        bad = int(np.flatnonzero(~np.isfinite(stats).all(axis=1))[0])
        raise ValueError(f"video {bad}: non-finite statistics {stats[bad].tolist()}")
    return VideoStatistics(stats=stats, magnitude=z_all)


class StatisticsPlan(NamedTuple):
    """How :func:`compute_statistics` batches one participant's videos.

    Attributes:
      buckets: ``(b, videos_per_batch, video_indices)`` per Gram bucket; the
        kernel shape is ``[videos_per_batch, b, *row_shape]``.
      long: indices of videos with ``m > D`` (covariance route).
      chunk_rows: rows per chunk of the covariance route.
    """

    buckets: list
    long: np.ndarray
    chunk_rows: int


def plan_statistics(lengths: ArrayLike, row_shape: tuple, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> StatisticsPlan:
    """Bucket plan for videos of ``lengths`` with rows of shape ``row_shape``.

    Batch sizes are ``min(rows_budget // b, next_pow2(videos in bucket))``,
    so the number of distinct kernel shapes is at most the number of buckets;
    long-video chunks hold ``min(rows_budget, next_pow2(longest video))`` rows.
    """
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    row_shape = tuple(int(r) for r in row_shape)
    feature_dim = row_shape[-1]
    rows_budget = max(1, int(chunk_bytes) // (4 * int(np.prod(row_shape))))
    real = lengths > 0
    short = np.flatnonzero(real & (lengths <= feature_dim))
    long = np.flatnonzero(real & (lengths > feature_dim))
    sizes = np.asarray(bucket_sizes(feature_dim))
    bucket_of = sizes[np.searchsorted(sizes, lengths[short])]
    buckets = []
    for b in np.unique(bucket_of):
        members = short[bucket_of == b]
        per_batch = max(1, rows_budget // int(b))
        per_batch = min(per_batch, 1 << int(np.ceil(np.log2(len(members)))))
        buckets.append((int(b), int(per_batch), members))
    chunk_rows = rows_budget
    if len(long):  # small data: no bigger chunk than the longest video needs
        chunk_rows = min(rows_budget, 1 << int(np.ceil(np.log2(lengths[long].max()))))
    return StatisticsPlan(buckets=buckets, long=long, chunk_rows=chunk_rows)


def _use_host_eigen(eigen_backend: str) -> bool:
    if eigen_backend == "auto":
        return jax.default_backend() == "cpu"
    if eigen_backend not in ("numpy", "jax"):
        raise ValueError(f"eigen_backend={eigen_backend!r}; valid: auto, numpy, jax")
    return eigen_backend == "numpy"


def _zero_state(feature_dim: int, opts: PseudoLabelOptions):
    second = (feature_dim,) if opts.entropy == "diag_reference" else (feature_dim, feature_dim)
    return (
        jnp.zeros(feature_dim, jnp.float32),
        jnp.zeros(second, jnp.float32),
        jnp.full(feature_dim, jnp.inf, jnp.float32),
        jnp.full(feature_dim, -jnp.inf, jnp.float32),
        jnp.zeros((), jnp.float32),
    )


def warmup_statistics(
    feature_shape: tuple,
    layout: Layout,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    eigen_backend: str = "auto",
) -> int:
    """Compiles every kernel :func:`compute_statistics` will use, on zeros.

    Runs each kernel once with the exact shapes of the real run (so a later
    :func:`compute_statistics` call on the same layout does not compile) and
    returns the number of kernel shapes. Lets benchmarks report compile time
    apart from steady time.
    """
    row_shape = tuple(int(r) for r in feature_shape[1:])
    has_crops = len(row_shape) == 2
    feature_dim = row_shape[-1]
    _, lengths, _ = _host_layout(layout)
    plan = plan_statistics(lengths, row_shape, chunk_bytes)
    host_eigen = _use_host_eigen(eigen_backend)
    count = 0
    for b, per_batch, _ in plan.buckets:
        out = _bucket_kernel(
            np.zeros((per_batch, b) + row_shape, np.float32), np.zeros(per_batch, np.int32), opts, host_eigen
        )
        jax.block_until_ready(out)
        count += 1
    if len(plan.long):
        buf = np.zeros((plan.chunk_rows,) + row_shape, np.float32)
        shift = _chunk_mean(buf, 1, has_crops)
        state, _ = _covariance_chunk(_zero_state(feature_dim, opts), buf, 1, shift, has_crops, opts)
        jax.block_until_ready(_covariance_entropy(state, 2, opts, host_eigen))
        count += 3
    return count


class _HostEigen:
    """Bounded queue of host eigendecompositions writing into ``entropy``."""

    def __init__(self, opts: PseudoLabelOptions, entropy: np.ndarray, max_pending: int = 4):
        self._opts = opts
        self._entropy = entropy
        self._max_pending = max_pending
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending: list = []

    def submit(self, videos: np.ndarray, matrices: np.ndarray, floors: np.ndarray) -> None:
        while len(self._pending) >= self._max_pending:
            self._finish_one()
        self._pending.append((videos, self._pool.submit(_host_entropy, matrices, floors, self._opts)))

    def _finish_one(self) -> None:
        videos, future = self._pending.pop(0)
        self._entropy[videos] = future.result()

    def finish(self) -> None:
        while self._pending:
            self._finish_one()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _collect(item, offsets, lengths, entropy, z_all, eigen) -> None:
    batch, (h, floor, z) = item
    z = np.asarray(z)
    for k, i in enumerate(batch):
        m = int(lengths[i])
        _check_finite(z[k, :m], int(i), 0)
        z_all[offsets[i] : offsets[i] + m] = z[k, :m]
    h = np.asarray(h)
    if h.ndim == 3:  # covariance Gram matrices: eigenvalues on the host
        eigen.submit(np.asarray(batch), h[: len(batch)], np.asarray(floor)[: len(batch)])
    else:
        entropy[batch] = h[: len(batch)]


def video_statistics(
    features: Any,
    layout: Layout,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    eigen_backend: str = "auto",
) -> np.ndarray:
    """``[N, 2] float32`` per-video ``[σ_i, H_i]`` (see :func:`compute_statistics`)."""
    return compute_statistics(
        features, layout, opts, chunk_bytes=chunk_bytes, eigen_backend=eigen_backend
    ).stats
