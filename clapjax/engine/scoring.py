"""Evaluation scoring of (test) features in batches, in eval mode (no dropout)."""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from clapjax.engine.method import Method, as_method

_SCORE_FNS: dict = {}


def _score_fn(method: Method):
    if method not in _SCORE_FNS:
        _SCORE_FNS[method] = jax.jit(lambda p, x: method.score(p, x))
    return _SCORE_FNS[method]


def score_segments(
    params,
    features: np.ndarray | Iterable[np.ndarray],
    options,
    batch_size: int = 4096,
) -> np.ndarray:
    """Segment scores ``[S] float32`` of features ``[S, C, D]`` (or ``[S, D]``)
    under ``options``: a method (its ``score``), or a ``ModelOptions`` (CLAP's
    scorer: segment probabilities).

    ``features`` may be an np.ndarray / np.memmap or a host row store such as
    :class:`clapjax.data.store.PackedFeatures` (read in chunks of
    ``batch_size`` rows, the next chunk read in a background thread, the last
    chunk padded so only one shape compiles), or an iterable of ``[s_i, C, D]``
    arrays (scored one by one, concatenated).
    """
    from clapjax.engine.backends import prefetched
    from clapjax.engine.data import is_row_store

    fn = _score_fn(as_method(options))
    if not isinstance(features, np.ndarray) and not is_row_store(features):
        outs = [np.asarray(fn(params, jnp.asarray(_as3d(np.asarray(b, np.float32))))) for b in features]
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)
    if isinstance(features, np.ndarray):
        features = _as3d(features)
    s = features.shape[0]
    out = np.empty(s, np.float32)
    bs = max(1, min(batch_size, s))

    def load(c: int) -> np.ndarray:
        chunk = np.asarray(features[c * bs : (c + 1) * bs], np.float32)
        n = chunk.shape[0]
        if n < bs:
            chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), np.float32)])
        return chunk

    n_chunks = -(-s // bs)
    for c, chunk in enumerate(prefetched(load, n_chunks)):
        start = c * bs
        n = min(bs, s - start)
        out[start : start + n] = np.asarray(fn(params, chunk))[:n]
    if not np.isfinite(out).all():
        raise FloatingPointError("non-finite segment scores: the parameters contain NaN/inf")
    return out


def _as3d(features: np.ndarray) -> np.ndarray:
    if features.ndim == 2:
        return features.reshape(features.shape[0], 1, features.shape[1])
    if features.ndim != 3:
        raise ValueError(f"features must have shape [S, C, D] or [S, D], got {features.shape}")
    return features
