"""What crosses the wire, and how it is encoded in Flower records.

Every message of the protocol and its records (the only ones ever sent):

=========================  =============================================  ===============================
message                    server → participant                           participant → server
=========================  =============================================  ===============================
``query.summary``          ``ConfigRecord "request"`` {num-participants}  ``MetricRecord "null"`` {mean, var,
                                                                          count}; ``ConfigRecord "node"``
                                                                          {partition-id}
``train``                  ``ArrayRecord "global"`` θ; SCAFFOLD:          ``ArrayRecord "delta"`` Δ_k;
                           ``ArrayRecord "server-control"`` c;            SCAFFOLD: ``ArrayRecord
                           ``ConfigRecord "round"`` {round};              "control-delta"`` Δc_k;
                           ``ConfigRecord "mixture"`` {weights, means,    ``MetricRecord "train"``
                           variances} (K floats each)                     {num-segments, steps, mean-loss,
                                                                          labels-changed}
=========================  =============================================  ===============================

Parameters travel as one ``Array`` per pytree leaf, named by its tree path
(``params/Dense_0/kernel``), so both sides check names and shapes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from clapjax.null_model import Mixture, NullGaussian

#: Record names of each message (direction, message type) -> allowed records.
PROTOCOL = {
    ("down", "query.summary"): {"request": "config"},
    ("up", "query.summary"): {"null": "metric", "node": "config"},
    ("down", "train"): {"global": "array", "server-control": "array", "round": "config", "mixture": "config"},
    ("up", "train"): {"delta": "array", "control-delta": "array", "train": "metric"},
}
#: Allowed keys of the scalar records.
SCALAR_KEYS = {
    "request": {"num-participants"},
    "null": {"mean", "var", "count"},
    "node": {"partition-id"},
    "round": {"round"},
    "mixture": {"weights", "means", "variances"},
    "train": {"num-segments", "steps", "mean-loss", "labels-changed"},
}


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_names(tree: Any) -> list[str]:
    """``"a/b/c"`` path name of every leaf, in tree order."""
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return ["/".join(_key_name(e) for e in path) for path, _ in paths]


def tree_to_record(tree: Any) -> ArrayRecord:
    """A parameter-shaped pytree as an ArrayRecord (one named Array per leaf)."""
    names = leaf_names(tree)
    leaves = jax.tree.leaves(tree)
    return ArrayRecord({n: Array(np.ascontiguousarray(np.asarray(x))) for n, x in zip(names, leaves)})


def record_to_tree(record: ArrayRecord, like: Any, what: str) -> Any:
    """Inverse of :func:`tree_to_record`, checked against ``like`` (names, shapes, dtypes)."""
    return check_leaves(record_leaves(record), like, what)


def record_leaves(record: ArrayRecord) -> dict:
    """``name -> np.ndarray`` of an ArrayRecord (checked later by :func:`check_leaves`)."""
    return {k: a.numpy() for k, a in record.items()}


def check_leaves(leaves: dict | list, like: Any, what: str) -> Any:
    """A pytree shaped like ``like`` from named (dict) or ordered (list) leaves.

    Raises:
      ValueError: naming the first missing, extra, mis-shaped or non-finite array.
    """
    names = leaf_names(like)
    like_leaves, treedef = jax.tree.flatten(like)
    if isinstance(leaves, dict):
        got = set(leaves)
        missing, extra = [n for n in names if n not in got], sorted(got - set(names))
        if missing or extra:
            raise ValueError(f"{what}: missing arrays {missing[:5]}, unexpected arrays {extra[:5]}")
        ordered = [leaves[n] for n in names]
    else:
        if len(leaves) != len(names):
            raise ValueError(f"{what}: {len(leaves)} arrays, expected {len(names)}")
        ordered = list(leaves)
    out = []
    for n, ref, arr in zip(names, like_leaves, ordered):
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(ref.shape) or arr.dtype != np.dtype(ref.dtype):
            raise ValueError(
                f"{what}: array {n!r} has shape {arr.shape} {arr.dtype}, expected {tuple(ref.shape)} {np.dtype(ref.dtype)}"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: array {n!r} holds non-finite values")
        out.append(arr)
    return jax.tree.unflatten(treedef, out)


def null_to_record(null: NullGaussian) -> MetricRecord:
    """``(Γ_k, Θ_k, M0_k)`` as a MetricRecord (exact: float32 → float64 → float32)."""
    return MetricRecord({"mean": float(null.mean), "var": float(null.var), "count": int(null.count)})


def record_to_null(record: MetricRecord, who: str) -> NullGaussian:
    """Validated NullGaussian from a participant's reply."""
    if set(record.keys()) != SCALAR_KEYS["null"]:
        raise ValueError(f"{who}: null summary has keys {sorted(record.keys())}, expected {sorted(SCALAR_KEYS['null'])}")
    mean, var, count = float(record["mean"]), float(record["var"]), int(record["count"])
    if not (np.isfinite(mean) and np.isfinite(var)) or var < 0 or count < 0:
        raise ValueError(f"{who}: invalid null summary mean={mean} var={var} count={count}")
    return NullGaussian(np.float32(mean), np.float32(var), np.int32(count))


def mixture_to_record(mixture: Mixture) -> ConfigRecord:
    return ConfigRecord({f: [float(v) for v in np.asarray(getattr(mixture, f))] for f in Mixture._fields})


def record_to_mixture(record: ConfigRecord) -> Mixture:
    fields = {f: np.asarray(record[f], np.float32) for f in Mixture._fields}
    sizes = {v.size for v in fields.values()}
    if len(sizes) != 1 or not all(np.isfinite(v).all() for v in fields.values()):
        raise ValueError(f"invalid mixture record: sizes {sizes}")
    return Mixture(**{k: jax.numpy.asarray(v) for k, v in fields.items()})
