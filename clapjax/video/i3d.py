"""Inception-I3D (Kinetics-400) as a Flax module, BatchNorm folded, per-backend convolutions.

The graph is DeepMind's Inception-I3D (Carreira & Zisserman, CVPR 2017;
``deepmind/kinetics-i3d`` ``i3d.py``): a 7x7x7 stride-2 stem, two 3-D max
pools, nine Inception modules (``Mixed_3b`` … ``Mixed_5c``), every convolution
followed by BatchNorm (no scale, ε = 1e-3) and ReLU, TensorFlow ``SAME``
padding everywhere (max pools pad with -inf). Input: ``[B, T, H, W, 3]``
float32 RGB in [-1, 1] (the pretrained weights' convention).

For inference every BatchNorm is folded into its convolution (``kernel / √(var
+ ε)``, ``bias = β − mean / √(var + ε)``; see :func:`clapjax.video.weights.fold_batch_norm`),
so each unit is one convolution plus bias and ReLU.

The 3-D convolutions are the cost (55.6 GFLOP per 16x224x224 clip, 70 % of it
in 3x3x3 kernels and 24 % in the stem). ``conv="xla"`` hands them to
``lax.conv_general_dilated`` as 3-D convolutions, the path for GPU/TPU, whose
convolution libraries take 3-D kernels directly. ``conv="fold"`` is the CPU
path: XLA:CPU's 3-D convolutions ran the whole network at about a fifth of the
matmul peak on the development machine (``experiments.bench_extract``), its 2-D
convolutions much faster, so the ``kt`` temporal taps of each kernel are
stacked along the channel axis (``[B·T', H, W, kt·C]``) and the convolution
becomes one 2-D convolution with a ``[kh, kw, kt·C, O]`` kernel (the network
then ran 2.9x faster per CPU-second). Both compute the same sums (differences
are float32 rounding of the summation order). ``1x1x1`` convolutions are
matmuls (``jnp.dot``) on every backend, and the three ``1x1x1`` branches of an
Inception module that read the same input are one matmul.
``default_conv()`` picks ``fold`` on CPU and ``xla`` elsewhere.

The feature is ``Mixed_5c`` averaged over time and space (``[B, 1024]``), the
pooling of the I3D feature releases of the video-anomaly literature
(``piergiaj/pytorch-i3d`` ``InceptionI3d.extract_features``: ``AvgPool3d([2, 7,
7], stride 1)`` on ``Mixed_5c``, which is the global mean for 16x224x224 clips).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CONV_IMPLS",
    "FEATURE_DIM",
    "INCEPTION_CHANNELS",
    "NUM_CLASSES",
    "I3DOutput",
    "InceptionI3D",
    "default_conv",
    "flops_per_clip",
    "kinetics400_labels",
    "max_pool_same",
    "conv3d_same",
    "scale_pixels",
]

#: Channels of ``Mixed_5c`` (the feature size).
FEATURE_DIM = 1024
#: Kinetics-400 classes.
NUM_CLASSES = 400
#: Convolution implementations (see the module docstring).
CONV_IMPLS = ("xla", "fold")

#: Output channels of each Inception module: branch 0 (1x1x1), branch 1 (1x1x1
#: then 3x3x3), branch 2 (1x1x1 then 3x3x3), branch 3 (3x3x3 max pool then
#: 1x1x1). Source: ``deepmind/kinetics-i3d`` ``i3d.py``, ``InceptionI3d._build``.
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def kinetics400_labels() -> tuple[str, ...]:
    """The 400 Kinetics-400 class names in the order of the logits.

    The class list of DeepMind's ``kinetics-i3d`` ``data/label_map.txt``
    (alphabetical, case-insensitive), stored in ``kinetics400_labels.txt``.
    """
    from importlib.resources import files

    text = files("clapjax.video").joinpath("kinetics400_labels.txt").read_text()
    return tuple(line for line in text.splitlines() if line)


def default_conv(backend: str | None = None) -> str:
    """``"fold"`` on CPU, ``"xla"`` on GPU/TPU (``backend``: default ``jax.default_backend()``)."""
    return "fold" if (backend or jax.default_backend()) == "cpu" else "xla"


def scale_pixels(frames: jax.Array) -> jax.Array:
    """uint8 RGB ``[..., 3]`` -> float32 in [-1, 1] (``x / 127.5 - 1``, the weights' input scale)."""
    return frames.astype(jnp.float32) * (1.0 / 127.5) - 1.0


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding of one axis: ``(before, after)``, extra on the end."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv3d_same(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1, 1),
                impl: str = "xla") -> jax.Array:
    """3-D convolution with TensorFlow ``SAME`` padding (no bias).

    Args:
      x: ``[B, T, H, W, C]`` float32.
      kernel: ``[kt, kh, kw, C, O]`` float32.
      strides: ``(st, sh, sw)``.
      impl: ``"xla"`` (one 3-D ``lax.conv_general_dilated``) or ``"fold"`` (the
        ``kt`` temporal taps stacked on the channel axis, one 2-D convolution).

    Returns:
      ``[B, ceil(T/st), ceil(H/sh), ceil(W/sw), O]`` float32.

    Raises:
      ValueError: unknown ``impl``.
    """
    kt, kh, kw, c, o = kernel.shape
    st, sh, sw = strides
    if (kt, kh, kw) == (1, 1, 1) and tuple(strides) == (1, 1, 1):
        return jnp.dot(x, kernel.reshape(c, o))
    if impl == "xla":
        return lax.conv_general_dilated(
            x, kernel, tuple(strides), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    if impl != "fold":
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    b, t = x.shape[:2]
    t_out = -(-t // st)
    if kt > 1:
        before, after = _same_pads(t, kt, st)
        xp = jnp.pad(x, ((0, 0), (before, after), (0, 0), (0, 0), (0, 0)))
        # Channel block j of output step i holds input step i*st + j (padded index).
        x2 = jnp.concatenate(
            [lax.slice_in_dim(xp, j, j + (t_out - 1) * st + 1, st, axis=1) for j in range(kt)],
            axis=-1)
    else:
        x2 = x[:, ::st]
    x2 = x2.reshape((b * t_out,) + x2.shape[2:])
    # [kt, kh, kw, C, O] -> [kh, kw, kt*C, O], matching the channel blocks above.
    k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * c, o)
    y = lax.conv_general_dilated(x2, k2, (sh, sw), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape((b, t_out) + y.shape[1:])


def _pool_axis(x: jax.Array, axis: int, k: int, s: int) -> jax.Array:
    """Max over windows of ``k`` with stride ``s`` and TF ``SAME`` padding (-inf) along ``axis``."""
    n = x.shape[axis]
    out = -(-n // s)
    before, after = _same_pads(n, k, s)
    if s == 2 and n % 2 == 0 and k in (2, 3) and before == 0:
        # Stride 2 on an even axis: view it as pairs, out[i] = max(x[2i], x[2i+1]
        # [, x[2i+2]]); contiguous reshapes instead of strided slices (5x faster on CPU).
        pairs = x.reshape(x.shape[:axis] + (n // 2, 2) + x.shape[axis + 1:])
        even = lax.index_in_dim(pairs, 0, axis + 1, keepdims=False)
        y = jnp.maximum(even, lax.index_in_dim(pairs, 1, axis + 1, keepdims=False))
        if k == 3:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, 1)
            y = jnp.maximum(y, jnp.pad(lax.slice_in_dim(even, 1, n // 2, axis=axis), pad,
                                       constant_values=-jnp.inf))
        return y
    pad = [(0, 0)] * x.ndim
    pad[axis] = (before, after)
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    y = None
    for j in range(k):
        sl = lax.slice_in_dim(xp, j, j + (out - 1) * s + 1, s, axis=axis)
        y = sl if y is None else jnp.maximum(y, sl)
    return y


def max_pool_same(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                  impl: str = "xla") -> jax.Array:
    """Max pool over ``(T, H, W)`` of ``[B, T, H, W, C]`` with TensorFlow ``SAME`` padding (-inf pads).

    ``impl="xla"`` is one ``lax.reduce_window``; any other value computes the
    same maximum axis by axis (a box max is separable) from shifted slices,
    which XLA:CPU fuses into a few elementwise loops instead of its generic
    windowed reduction (2x faster for the 3x3x3 stride-1 pools, 3x for the
    stride-2 ones, measured in CPU time on the reference machine).
    """
    if impl == "xla":
        pads = [(0, 0)] + [_same_pads(n, k, s) for n, k, s in zip(x.shape[1:4], window, strides)] + [(0, 0)]
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), pads)
    for axis, (k, s) in enumerate(zip(window, strides), start=1):
        if k > 1 or s > 1:
            x = _pool_axis(x, axis, k, s)
    return x


class ConvParams(nn.Module):
    """Folded convolution parameters of one I3D unit: ``kernel [kt, kh, kw, C, O]`` and ``bias [O]``."""

    features: int
    kernel_size: tuple[int, int, int]

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.kernel_size, in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return kernel, bias


class I3DOutput(NamedTuple):
    """Per-clip outputs of :class:`InceptionI3D`.

    Attributes:
      features: ``[B, 1024]`` float32, ``Mixed_5c`` averaged over time and space.
      logits: ``[B, 400]`` float32 Kinetics-400 logits (the released head:
        average pool ``[2, 7, 7]`` (stride 1, VALID), 1x1x1 convolution, mean over
        time), or ``None`` when ``Mixed_5c`` is smaller than 2x7x7 (inputs under
        9 frames or 193 pixels).
      mixed_5c: ``[B, ceil(T/8), ceil(H/32), ceil(W/32), 1024]`` float32 activations.
    """

    features: jax.Array
    logits: jax.Array | None
    mixed_5c: jax.Array


def _unit(x: jax.Array, params: tuple[jax.Array, jax.Array], strides=(1, 1, 1), impl="xla",
          relu: bool = True) -> jax.Array:
    kernel, bias = params
    y = conv3d_same(x, kernel, strides, impl) + bias
    return jax.nn.relu(y) if relu else y


class InceptionI3D(nn.Module):
    """Inception-I3D with folded BatchNorm (inference only).

    Attributes:
      conv: convolution implementation, ``"xla"`` or ``"fold"`` (see module
        docstring); :func:`default_conv` picks per backend.
      pool: max-pool implementation, ``"xla"`` (``reduce_window``) or
        ``"shifted"`` (separable strided maxima); default ``"shifted"`` on CPU.

    Parameters (``variables["params"]``): ``Conv3d_1a_7x7``, ``Conv3d_2b_1x1``,
    ``Conv3d_2c_3x3``, each Inception module's ``Branch_0_Conv3d_0a_1x1``,
    ``Branch_1_Conv3d_0a_1x1``, ``Branch_1_Conv3d_0b_3x3``,
    ``Branch_2_Conv3d_0a_1x1``, ``Branch_2_Conv3d_0b_3x3``,
    ``Branch_3_Conv3d_0b_1x1`` and ``Logits``, each ``{"kernel", "bias"}``
    (:func:`clapjax.video.weights.load_i3d_params` gives the Kinetics-400 ones).
    """

    conv: str = "xla"
    pool: str = "xla"

    def _inception(self, name: str, x: jax.Array) -> jax.Array:
        o = INCEPTION_CHANNELS[name]
        c = x.shape[-1]
        with_name = lambda suffix, features, k: ConvParams(  # noqa: E731
            features, k, name=f"{name}_{suffix}")
        b0 = with_name("Branch_0_Conv3d_0a_1x1", o[0], (1, 1, 1))(c)
        b1a = with_name("Branch_1_Conv3d_0a_1x1", o[1], (1, 1, 1))(c)
        b1b = with_name("Branch_1_Conv3d_0b_3x3", o[2], (3, 3, 3))(o[1])
        b2a = with_name("Branch_2_Conv3d_0a_1x1", o[3], (1, 1, 1))(c)
        b2b = with_name("Branch_2_Conv3d_0b_3x3", o[4], (3, 3, 3))(o[3])
        b3 = with_name("Branch_3_Conv3d_0b_1x1", o[5], (1, 1, 1))(c)
        # The three 1x1x1 convolutions of x are one matmul (wider N, one pass over x).
        fused = (jnp.concatenate([b0[0], b1a[0], b2a[0]], axis=-1),
                 jnp.concatenate([b0[1], b1a[1], b2a[1]], axis=-1))
        y = _unit(x, fused)
        y0, y1, y2 = jnp.split(y, [o[0], o[0] + o[1]], axis=-1)
        y1 = _unit(y1, b1b, impl=self.conv)
        y2 = _unit(y2, b2b, impl=self.conv)
        y3 = _unit(max_pool_same(x, (3, 3, 3), (1, 1, 1), self.pool), b3)
        return jnp.concatenate([y0, y1, y2, y3], axis=-1)

    def _mixed_5c(self, x: jax.Array) -> jax.Array:
        p = lambda name, features, k, cin: ConvParams(features, k, name=name)(cin)  # noqa: E731
        x = _unit(x, p("Conv3d_1a_7x7", 64, (7, 7, 7), x.shape[-1]), (2, 2, 2), self.conv)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2), self.pool)
        x = _unit(x, p("Conv3d_2b_1x1", 64, (1, 1, 1), 64))
        x = _unit(x, p("Conv3d_2c_3x3", 192, (3, 3, 3), 64), impl=self.conv)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2), self.pool)
        x = self._inception("Mixed_3b", x)
        x = self._inception("Mixed_3c", x)
        x = max_pool_same(x, (3, 3, 3), (2, 2, 2), self.pool)
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = self._inception(name, x)
        x = max_pool_same(x, (2, 2, 2), (2, 2, 2), self.pool)
        x = self._inception("Mixed_5b", x)
        return self._inception("Mixed_5c", x)

    @nn.compact
    def __call__(self, x: jax.Array) -> I3DOutput:
        """Outputs for clips ``x [B, T, H, W, 3]`` float32 in [-1, 1] (see :class:`I3DOutput`)."""
        m = self._mixed_5c(x)
        features = jnp.mean(m, axis=(1, 2, 3))
        kernel, bias = ConvParams(NUM_CLASSES, (1, 1, 1), name="Logits")(FEATURE_DIM)
        logits = None
        if m.shape[1] >= 2 and m.shape[2] >= 7 and m.shape[3] >= 7:
            # The released head: average pool [2, 7, 7] (stride 1, VALID), 1x1x1 conv, mean over time.
            pooled = lax.reduce_window(m, 0.0, lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1),
                                       "VALID") / 98.0
            logits = jnp.mean(jnp.dot(pooled, kernel.reshape(FEATURE_DIM, NUM_CLASSES)) + bias,
                              axis=(1, 2, 3))
        return I3DOutput(features, logits, m)


def flops_per_clip(frames: int = 16, height: int = 224, width: int = 224) -> int:
    """Multiply-add FLOPs (2 per MAC) of the convolutions up to ``Mixed_5c`` for one clip.

    55,575,138,304 (55.6 GFLOP) for 16x224x224. Pooling, bias, ReLU and the
    logits head are not counted (under 0.1 %).
    """
    def conv(t, h, w, cin, cout, k, s=(1, 1, 1)):
        to, ho, wo = -(-t // s[0]), -(-h // s[1]), -(-w // s[2])
        return 2 * to * ho * wo * cin * cout * math.prod(k), (to, ho, wo)

    total, (t, h, w) = conv(frames, height, width, 3, 64, (7, 7, 7), (2, 2, 2))
    h, w = -(-h // 2), -(-w // 2)
    total += conv(t, h, w, 64, 64, (1, 1, 1))[0] + conv(t, h, w, 64, 192, (3, 3, 3))[0]
    h, w = -(-h // 2), -(-w // 2)
    c = 192
    for name, o in INCEPTION_CHANNELS.items():
        if name == "Mixed_4b":
            t, h, w = -(-t // 2), -(-h // 2), -(-w // 2)
        elif name == "Mixed_5b":
            t, h, w = -(-t // 2), -(-h // 2), -(-w // 2)
        total += conv(t, h, w, c, o[0] + o[1] + o[3] + o[5], (1, 1, 1))[0]
        total += conv(t, h, w, o[1], o[2], (3, 3, 3))[0] + conv(t, h, w, o[3], o[4], (3, 3, 3))[0]
        c = o[0] + o[2] + o[4] + o[5]
    return total
