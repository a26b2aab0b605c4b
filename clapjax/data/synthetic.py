"""A UCF-Crime / XD-Violence shaped synthetic dataset: real structure, synthetic values.

Everything except the feature values is real: video counts, names, order,
per-video lengths, video labels, event classes, the test anomaly intervals
and (through :mod:`clapjax.splits`) the official participant splits. The
features are generated lazily and deterministically: video ``t`` of a part is
a function of ``(seed, dataset, part, t)`` alone (its own
``np.random.SeedSequence``), so a participant generates only its own videos
and any subset is reproducible without generating the rest.

Generative model of one video (``D`` dims; a feature is
``x_t = gain · mean_norm · exp(a_t) · dir(μ ⊙ exp(y_t))``, rectified at a
small level, where ``dir`` scales to unit norm):

* **Positive features, norm and direction apart.** Real I3D features are
  post-ReLU averages (0.25-0.38 % of the values are 0, none negative), so a
  feature is a positive per-dimension mean ``μ`` (gamma-distributed across
  dimensions) modulated multiplicatively. Its *norm* moves only with the
  scalar activity ``a_t`` and the per-video ``gain``; its *direction* only
  with the relative deviation ``y_t`` (orthogonal, in the ``μ²``-weighted
  sense, to the norm direction). CLAP's magnitude statistics (σ, the SPL
  p-values) see the first; its entropy ``H`` and the scorer see both.
* **Normal direction** of a *scene*: a scene offset, a scene-specific rank-
  ``rank`` latent basis (half shared, half scene-own) with amplitudes
  ``k^-spectrum_decay``, AR(1) in time with a per-video coefficient around
  ``smoothness``, plus a white part (``noise_share`` of the variance).
  UCF training videos take their scene from the official 11-scene
  membership; other videos get a hashed scene (XD: hashed by source
  movie/channel, so clips of one movie share a scene). Each video adds its
  own direction offset and gain (camera, exposure).
* **Activity** ``a_t``: AR(1) with std ``activity`` and coefficient
  ``activity_smoothness``: the within-video norm variation (CLAP's σ).
* **Anomalies** (anomalous videos, inside their windows): a direction shift
  along an event-class pattern (half shared by all classes, e.g. sudden
  motion, half class-specific) of class-specific strength (log-normal across
  classes and videos), with a class-specific temporal variation and smooth
  onsets; and a rise of the activity (the norm) by about ``rise``, except in
  a fraction ``no_rise_fraction`` of anomalous videos (varying by class),
  where only the direction changes.
* **Windows**: test windows are the real annotated intervals. Training windows
  are drawn from the real test intervals of the same class (relative position
  and length, all intervals of one test video, jittered), so their number,
  position and relative length follow the real annotation statistics.
* **Footage bias**: the white-noise level varies per video and is higher by
  ``video_bias`` (log scale) for anomalous videos.
* **Distractors**: a fraction ``burst_fraction`` of normal videos has
  activity bursts (camera motion, lighting) in windows drawn like anomaly
  windows, with a generic direction change. A magnitude-only detector fires
  on them.
* **Crops** (``crops > 1``): log-scale deviations centred over the crops, of
  relative rms ``crop_variation`` and norm spread ``CROP_ACTIVITY``.

Defaults and their sources. Every measured number below is a row of the
calibration table, ``python -m experiments.calibrate`` (README, "The embedded
synthetic dataset"), on real I3D features extracted by this project from the
shared videos (``../shared/real``: 7 UCF-Crime CCTV videos, 6 of them road
accidents, and UCSD Ped2 test 01-06; centre crop and 10 crops) and on the
shared real C3D features (Sultani's format; rows L2-normalised, so only
their direction statistics count). Values are fitted to those statistics,
never to how CLAP or any scorer performs on the data.

* ``feature_dim=128, crops=1``: a size choice, not a fit. Real lengths are
  kept (779,780 UCF train segments); at D=1024 x 10 crops that would be
  32 GB. 128 x 1 is 0.37 GB in float32. Training cost per round scales with
  segments x crops, so 1 crop keeps the main job within its time budget.
  Every statistic the generator is fitted to is scale-free or a norm, so it
  does not depend on ``D`` (the eigen-spectrum statistics use at most 24
  segments, far below ``D``).
* ``mean_norm=8.7``: mean segment norm of real I3D, 10 crops (CCTV 8.70,
  Ped2 9.61; centre crop 9.27 and 10.05). I3D's norm does not depend on how
  many dimensions a synthetic feature has, so the synthetic norm keeps it
  and absolute magnitudes (σ, the null Gaussians) are on the real scale.
* ``mean_shape=4.0``: gamma shape of the per-dimension means; measured
  ``mean²/var`` of the per-dimension means 4.7-5.0 (CCTV), 2.7-2.8 (Ped2),
  3.6 on the default preset (128 draws of gamma(4) with this seed, widened
  by the log-normal modulation): between the two real sets, loosely pinned.
* ``WITHIN_EXPONENT``, ``BETWEEN_EXPONENT`` (module constants): how a
  dimension's relative deviation scales with its mean (slopes measured on
  CCTV 10 crops, see below).
* ``rank=32, spectrum_decay=0.5, smoothness=0.8, variation=0.2,
  noise_share=0.15``: fitted jointly to the lag-1 autocorrelation of the
  features in 8-segment windows (real 0.16-0.24), the top-1 eigenvalue share
  in 8-segment windows (0.40-0.44) and ``H`` of a video's first 8, 16 and 24
  segments (1.51-1.65, 2.09-2.18, 2.05-2.36). The shared real videos are 9-29
  segments long, so how ``H`` grows beyond 24 segments (and so its
  dependence on video length over UCF's 10-6,750 segments) is NOT pinned by
  real data: it follows from the AR(1) latent model.
* ``activity=0.065, activity_smoothness=0.55``: the norm's CV in 8-segment
  windows (real 0.036-0.058) and over whole videos (0.039-0.082), σ / mean
  norm (median 0.05-0.09) and the lag-1 autocorrelation of the norm (-0.12
  to 0.26; 6-7 videos per set, so it is loosely pinned).
* ``video_spread=0.3``: rms direction spread of video means across videos,
  CCTV 0.29-0.34 (several scenes, like UCF-Crime; Ped2, one scene, 0.13-0.15).
* ``gain_spread=0.11``: across-video CV of the mean norm, CCTV 0.092-0.104
  (Ped2 0.03, one scene).
* ``crop_variation=0.28`` and ``CROP_ACTIVITY=0.06``: relative rms deviation
  of a crop from the crop mean (CCTV 0.280, Ped2 0.249) and the CV of the
  crops' norms (0.061, 0.053).
* ``strength=0.85``: the direction shift of anomalies (mean anomalous minus
  mean normal feature of a video, norm direction removed, over the normal
  within-video spread; median 0.74-1.49 over the real sets).
* ``rise=0.09, no_rise_fraction=0.1``: the rise of the norm inside annotated
  anomalies: per-video frame AUC of the norm (real medians 0.72-0.84,
  ranges 0.33-0.94) and mean norm inside / outside minus 1 (median
  0.033-0.063).
* NOT pinned by real data, kept from the previous generator: the shared sets
  have 1 normal video (CCTV) or none (Ped2), so nothing that compares normal
  with anomalous videos can be measured: ``burst_fraction=0.3,
  burst_strength=1.0`` (distractors in normal videos), ``video_bias=0.2``
  (footage difference of anomalous videos; 0 removes it),
  ``anomaly_variation=1.0, anomaly_smoothness=0.6`` (within-anomaly
  dynamics: 6 anomalous videos of 15-29 segments do not pin them),
  ``xd_scenes=16``.
* Not a fitted quantity: the pooled frame AUC of the feature-norm scorer on
  the synthetic test set is a consequence of the values above, reported
  beside the real ones in the table (CCTV 0.56-0.57, Ped2 0.70-0.74).

The ``tiny`` preset (tests) keeps every video but caps lengths at 32 segments
(test intervals are rescaled to the shortened videos) with D=16: only for
quick end-to-end runs; its numbers mean nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from clapjax import splits as splits_mod
from clapjax import tables
from clapjax.data.groundtruth import INTERVAL_CONVENTION, interval_labels, segment_labels_from_frames
from clapjax.data.sources import CROP_MODES, SourceBase, _resolve_videos
from clapjax.tables import FRAMES_PER_SEGMENT

__all__ = ["SyntheticConfig", "SyntheticSource", "shrink_split"]

_PART_CODE = {("ucf", "train"): 0, ("ucf", "test"): 1, ("xd", "train"): 2, ("xd", "test"): 3}
_GLOBAL_STREAM = 1_000_000  # distinct from any video index
_BLOCK = 64  # AR(1) block length
_DYN_RANK = 8  # rank of the within-anomaly temporal variation of a class
#: Weight of the pattern all anomaly classes share (the rest is class-specific).
SHARED = 0.5


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings (see the module docstring for the model and the
    measurement behind every default).

    All variations are *relative* to the per-dimension mean ``μ``: a feature
    is ``gain · μ ⊙ (1 + a_t + y_t)``, rectified at 0, with ``a_t`` a scalar
    (the "activity" along the mean direction, which alone moves the norm) and
    ``y_t`` a direction change that leaves the norm unchanged to first order.
    "rms" below is the ``μ²``-weighted root mean square over dimensions, the
    relative change of a feature vector.

    Attributes:
      seed: base seed; video t's features depend on (seed, dataset, part, t) only.
      feature_dim: ``D``.
      crops: crops per segment (their mean is the generated feature).
      mean_norm: typical segment norm ``‖f‖₂``.
      mean_shape: gamma shape of the per-dimension means ``μ_d``.
      rank: rank of the scene-specific latent direction dynamics.
      spectrum_decay: the latent dimension ``k`` has amplitude ``k^-decay``.
      smoothness: mean AR(1) coefficient of the latent direction dynamics.
      variation: rms of the within-video direction change ``y_t``.
      noise_share: share of ``variation²`` that is white per segment (the
        rest is the smooth latent part).
      activity: std of the activity ``a_t`` (relative norm change).
      activity_smoothness: AR(1) coefficient of ``a_t``.
      video_spread: rms of the per-video (scene + video) direction offset.
      gain_spread: log-scale std of the per-video gain (half scene, half video).
      crop_variation: rms of a crop's deviation from the crop mean.
      strength: direction shift of an anomaly, in units of ``variation``.
      rise: typical rise of the activity (relative norm) inside an anomaly.
      no_rise_fraction: mean fraction of anomalous videos whose anomaly
        changes only the direction (the norm is kept exactly).
      burst_fraction: fraction of normal videos with activity bursts.
      burst_strength: typical activity rise of a burst, relative to ``rise``.
      anomaly_variation: size of the class-specific temporal variation inside
        an anomaly, relative to its mean pattern (anomalies are eventful).
      anomaly_smoothness: AR(1) coefficient of that variation.
      video_bias: log-scale increase of the white-noise level of every
        segment of anomalous videos (whole video, not just the anomaly). 0
        removes any video-level difference outside the anomaly itself.
      xd_scenes: number of hashed scenes for XD-Violence.
      max_segments: cap on video length; ``None`` keeps the real lengths
        (only the ``tiny`` preset shortens videos).
    """

    seed: int = 0
    feature_dim: int = 128
    crops: int = 1
    mean_norm: float = 8.7
    mean_shape: float = 4.0
    rank: int = 32
    spectrum_decay: float = 0.5
    smoothness: float = 0.8
    variation: float = 0.2
    noise_share: float = 0.15
    activity: float = 0.065
    activity_smoothness: float = 0.55
    video_spread: float = 0.3
    gain_spread: float = 0.11
    crop_variation: float = 0.28
    strength: float = 0.85
    rise: float = 0.09
    no_rise_fraction: float = 0.1
    burst_fraction: float = 0.3
    burst_strength: float = 1.0
    anomaly_variation: float = 1.0
    anomaly_smoothness: float = 0.6
    video_bias: float = 0.2
    xd_scenes: int = 16
    max_segments: int | None = None

    def __post_init__(self):
        if self.feature_dim < 2 or self.crops < 1 or self.rank < 1:
            raise ValueError(
                f"SyntheticConfig: feature_dim >= 2, crops >= 1 and rank >= 1 are required, got "
                f"{self.feature_dim}, {self.crops}, {self.rank}"
            )
        for f in ("smoothness", "anomaly_smoothness", "activity_smoothness"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ValueError(f"SyntheticConfig: {f} must be in [0, 1), got {getattr(self, f)}")
        for f in ("no_rise_fraction", "burst_fraction", "noise_share"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"SyntheticConfig: {f} must be in [0, 1], got {getattr(self, f)}")
        nonneg = ("strength", "rise", "variation", "activity", "video_spread", "gain_spread",
                  "crop_variation", "burst_strength", "anomaly_variation", "spectrum_decay", "video_bias")
        for f in nonneg:
            value = getattr(self, f)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"SyntheticConfig: {f} must be a finite number >= 0, got {value!r}")
        for f in ("mean_norm", "mean_shape"):
            value = getattr(self, f)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"SyntheticConfig: {f} must be a finite number > 0, got {value!r}")
        if self.max_segments is not None and self.max_segments < 1:
            raise ValueError(f"SyntheticConfig: max_segments must be >= 1, got {self.max_segments}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SyntheticConfig":
        """``"default"`` (main command, real lengths) or ``"tiny"`` (tests)."""
        presets = {
            "default": {},
            "tiny": {"feature_dim": 16, "crops": 2, "rank": 4, "max_segments": 32},
        }
        if name not in presets:
            raise ValueError(f"unknown synthetic preset {name!r}; valid: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})


def shrink_split(split: splits_mod.Split, videos_per_participant: int) -> splits_mod.Split:
    """A smaller split for quick runs: each participant keeps its first
    ``videos_per_participant`` anomalous and first ``videos_per_participant``
    normal videos (train-table indices unchanged, so any source reads them)."""
    n = int(videos_per_participant)
    if n < 1:
        raise ValueError(f"videos_per_participant must be >= 1, got {videos_per_participant}")
    parts = []
    for p in split.participants:
        anom = split.table.anomalous[p]
        parts.append(np.sort(np.concatenate([p[anom][:n], p[~anom][:n]])))
    small = dataclasses.replace(
        split, participants=tuple(parts), source=f"shrink_split({split.source}, {n})"
    )
    return splits_mod.validate(small, require_cover=False)


# --------------------------------------------------------------------------- model

#: Per-dimension relative deviations scale as ``μ_d^-WITHIN_EXPONENT`` within a
#: video and ``μ_d^-BETWEEN_EXPONENT`` between videos: least-squares slopes of
#: log(std/mean) on log(mean) over the 1024 dimensions of the real I3D
#: features of the shared CCTV videos (10 crops): -0.59 within, -0.25 between
#: (within rounded to 0.5).
WITHIN_EXPONENT = 0.5
BETWEEN_EXPONENT = 0.25
#: Activity std of a crop relative to the crop mean (calibration table, real
#: I3D with 10 crops: median CV of the crops' norms 0.061 CCTV, 0.053 Ped2).
CROP_ACTIVITY = 0.06
#: Values below ``ZERO_LEVEL`` times the root-mean-square value are set to 0
#: (real I3D features hold exact zeros, where every pooled ReLU was off):
#: 0.27 % zeros in the default preset against 0.25-0.38 % in real I3D
#: (calibration table, "non-positive values").
ZERO_LEVEL = 0.04


class _GlobalModel:
    """Scene and class parameters shared by all videos of one (dataset, config).

    Relative deviations ``y [.., D]`` act on the feature as ``μ ⊙ (1 + y)``;
    :meth:`orth` removes their first-order effect on the norm (the
    ``μ²``-weighted mean), so that only the activity ``a_t`` moves norms.
    """

    def __init__(self, dataset: str, cfg: SyntheticConfig):
        D, r = cfg.feature_dim, cfg.rank
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _GLOBAL_STREAM, 0]))
        mu = rng.gamma(cfg.mean_shape, 1.0, D)
        self.weights = mu**2 / np.sum(mu**2)  # μ²-weights: Σ w_d y_d = first-order relative norm change
        rel = mu / np.mean(mu)
        self.within = self._unit(rel**-WITHIN_EXPONENT)
        self.between = self._unit(rel**-BETWEEN_EXPONENT)
        # x_d = μ_d exp(y_d) has mean μ_d exp(v_d / 2) for a Gaussian y_d of
        # variance v_d: divide it out, so that μ is the per-dimension mean, and
        # scale μ so that the typical segment norm is mean_norm.
        v = ((cfg.variation * self.within) ** 2 + (cfg.video_spread * self.between) ** 2
             + cfg.activity**2)
        self.zero_level = ZERO_LEVEL / np.sqrt(D)  # times the segment norm
        mu = mu * cfg.mean_norm / np.sqrt(np.sum(mu**2 * np.exp(v)))
        self.mean = (mu * np.exp(-v / 2.0)).astype(np.float32)
        self.n_scenes = 11 if dataset == "ucf" else int(cfg.xd_scenes)
        half_spread = cfg.video_spread / np.sqrt(2.0)
        self.scene_offset = half_spread * self.orth(self.between * rng.standard_normal((self.n_scenes, D)))
        # Latent basis: half shared by all scenes, half scene-own; rows ⊥ the norm
        # direction with rms 1, then amplitude k^-decay normalised to unit total.
        shared = rng.standard_normal((r, D))
        own = rng.standard_normal((self.n_scenes, r, D))
        basis = self.orth(self.within * (shared[None] + own) / np.sqrt(2.0))
        basis /= self.rms(basis)[..., None]
        amp = np.arange(1, r + 1, dtype=np.float64) ** -cfg.spectrum_decay
        amp /= np.sqrt(np.sum(amp**2))
        self.scene_basis = (basis * amp[None, :, None]).astype(np.float32)
        self.scene_noise = np.exp(0.2 * rng.standard_normal(self.n_scenes))
        self.scene_gain = np.exp(cfg.gain_spread / np.sqrt(2.0) * rng.standard_normal(self.n_scenes))
        burst = self.orth(self.within * rng.standard_normal(D))
        self.burst_pattern = burst / self.rms(burst)
        # What anomalies of different classes share (e.g. sudden motion).
        common = self.orth(self.within * rng.standard_normal(D))
        self.common = common / self.rms(common)
        self._cfg = cfg
        self._classes: dict[str, tuple] = {}

    def _unit(self, s: np.ndarray) -> np.ndarray:
        """``s`` scaled to μ²-weighted rms 1."""
        return s / np.sqrt(np.sum(self.weights * s**2))

    def rms(self, y: np.ndarray) -> np.ndarray:
        """μ²-weighted rms over the last axis."""
        return np.sqrt(np.sum(self.weights * y**2, axis=-1))

    def orth(self, y: np.ndarray) -> np.ndarray:
        """``y`` minus its μ²-weighted mean (no first-order norm change)."""
        return y - (y @ self.weights.astype(y.dtype))[..., None]

    def event(self, label: str):
        """(direction pattern [D], dynamics [8, D], strength, no-rise prob) of an event class."""
        if label not in self._classes:
            cfg, D = self._cfg, self._cfg.feature_dim
            code = zlib.crc32(label.encode())
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _GLOBAL_STREAM, 1, code]))
            mask = rng.random(D) < 0.3
            mask[rng.integers(D)] = True
            own = self.orth(self.within * rng.standard_normal(D) * mask)
            pattern = self.orth(SHARED * self.common + (1 - SHARED) * own / self.rms(own))
            pattern /= self.rms(pattern)
            dyn = self.orth(self.within * rng.standard_normal((_DYN_RANK, D)) * mask)
            dyn /= np.sqrt(np.sum(self.rms(dyn) ** 2))
            strength = float(np.exp(np.clip(0.25 * rng.standard_normal(), -0.5, 0.5)))
            no_rise = float(np.clip(cfg.no_rise_fraction + 0.15 * rng.standard_normal(), 0.0, 1.0))
            if cfg.no_rise_fraction in (0.0, 1.0):
                no_rise = cfg.no_rise_fraction
            self._classes[label] = (pattern, dyn, strength, no_rise)
        return self._classes[label]


@functools.lru_cache(maxsize=8)
def _global_model(dataset: str, cfg: SyntheticConfig) -> _GlobalModel:
    return _GlobalModel(dataset, cfg)


@functools.lru_cache(maxsize=2)
def _ucf_train_scenes() -> np.ndarray:
    split = splits_mod.load("ucf", "scene", 11)
    scene = np.full(len(split.table), -1, np.int64)
    for k, p in enumerate(split.participants):
        scene[p] = k
    return scene


def _event_labels(dataset: str, cls: str) -> list[str]:
    """Event labels of a video's class field (XD codes like ``B2-B6-0`` are multi-label)."""
    if dataset == "ucf":
        return [cls]
    return [c for c in cls.split("-") if c not in ("0", "A")] or ["A"]


@functools.lru_cache(maxsize=4)
def _test_interval_pool(dataset: str) -> dict[str, list[list[tuple[float, float]]]]:
    """Relative (start, length) interval sets of real test videos, by primary event label."""
    table = tables.load_table(dataset, "test")
    conv = INTERVAL_CONVENTION[dataset]
    pool: dict[str, list] = {}
    for i in np.flatnonzero(table.anomalous):
        nf = int(table.n_frames[i])
        rel = []
        for s, e in table.anomaly_frames[i]:
            stop = min(e + 1 if conv == "inclusive" else e, nf)
            if stop > s:
                rel.append((s / nf, (stop - s) / nf))
        if rel:
            pool.setdefault(_event_labels(dataset, table.classes[i])[0], []).append(rel)
            pool.setdefault("*", []).append(rel)
    return pool


def _ar1(rng: np.random.Generator, m: int, k: int, phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) ``[m, k]``, exact, in blocks of 64 steps."""
    nb = -(-m // _BLOCK)
    e = np.zeros((nb * _BLOCK, k))
    e[:m] = rng.standard_normal((m, k)) * np.sqrt(1.0 - phi * phi)
    e = e.reshape(nb, _BLOCK, k)
    lag = np.arange(_BLOCK)[:, None] - np.arange(_BLOCK)[None, :]
    kernel = np.where(lag >= 0, phi ** np.maximum(lag, 0), 0.0)
    y = np.einsum("ij,njk->nik", kernel, e)
    decay = phi ** np.arange(1, _BLOCK + 1)
    state = rng.standard_normal(k)
    for n in range(nb):
        y[n] += decay[:, None] * state
        state = y[n, -1]
    return y.reshape(nb * _BLOCK, k)[:m]


def _envelope(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Anomaly envelope ``[m]`` in (0, 1.5] on labelled runs, 0 elsewhere.

    Smooth onsets/offsets (labelled edges are weaker) and slow fluctuations.
    """
    m = labels.size
    env = np.zeros(m)
    lab = np.r_[0, labels.astype(np.int8), 0]
    starts = np.flatnonzero(np.diff(lab) == 1)
    ends = np.flatnonzero(np.diff(lab) == -1)
    for a, b in zip(starts, ends):
        n = b - a
        ramp_len = min(3, n // 3)
        run = np.ones(n)
        if ramp_len:
            ramp = np.linspace(0.35, 1.0, ramp_len + 1)[:-1]
            run[:ramp_len] = ramp
            run[n - ramp_len :] = np.minimum(run[n - ramp_len :], ramp[::-1])
        env[a:b] = run
    if labels.any():
        wobble = 1.0 + 0.25 * _ar1(rng, m, 1, 0.8)[:, 0]
        env = np.where(labels > 0, np.clip(env * wobble, 0.3, 1.5), 0.0)
    return env


def _windows_from_pool(
    pool: list[list[tuple[float, float]]], m: int, rng: np.random.Generator
) -> np.ndarray:
    """Segment labels ``[m]`` from one randomly drawn real interval set, jittered."""
    rel = pool[int(rng.integers(len(pool)))]
    labels = np.zeros(m, np.uint8)
    for start, length in rel:
        length = min(1.0, length * float(np.exp(0.25 * rng.standard_normal())))
        start = float(np.clip(start + 0.05 * rng.standard_normal(), 0.0, 1.0 - length))
        a = min(int(np.floor(start * m)), m - 1)
        b = min(m, max(a + 1, int(np.round((start + length) * m))))
        labels[a:b] = 1
    return labels


# --------------------------------------------------------------------------- source


class SyntheticSource(SourceBase):
    """Lazy synthetic features for one part of a dataset (see module docstring).

    Index ``i`` is a position in ``names`` (all table videos by default, or the
    ``videos`` subset); the features of a video depend only on its table row.
    """

    def __init__(
        self,
        dataset: str,
        part: str,
        config: SyntheticConfig,
        videos: ArrayLike | Sequence[str] | None = None,
        crops: str = "keep",
    ):
        if not isinstance(config, SyntheticConfig):
            raise TypeError(f"synthetic= must be a SyntheticConfig, got {type(config).__name__}")
        if crops not in CROP_MODES:
            raise ValueError(f"crops must be one of {CROP_MODES}, got {crops!r}")
        ds = tables.canonical_dataset(dataset)
        self.table = tables.load_table(ds, part)
        idx = _resolve_videos(self.table, videos)
        self.dataset, self.part, self.config = ds, part, config
        self.table_index = idx
        self.names = tuple(self.table.names[i] for i in idx)
        real = self.table.n_segments[idx].astype(np.int64)
        self.lengths = real if config.max_segments is None else np.minimum(real, config.max_segments)
        self.shortened = bool((self.lengths != real).any())
        self.crop_mode = crops
        self.file_crops = config.crops
        self.crops = 1 if crops == "mean" else config.crops
        self.feature_dim = config.feature_dim
        self._model = _global_model(ds, config)
        self._code = _PART_CODE[(ds, part)]

    # -- structure ---------------------------------------------------------

    def _rng(self, t: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(
            np.random.SeedSequence([self.config.seed, self._code, int(t), stream])
        )

    def scene(self, i: int) -> int:
        """Scene of video ``i`` (official membership for UCF train, else hashed)."""
        t = int(self.table_index[i])
        if self.dataset == "ucf" and self.part == "train":
            return int(_ucf_train_scenes()[t])
        key = self.names[i] if self.dataset == "ucf" else self.names[i].split("__")[0]
        return zlib.crc32(key.encode()) % self._model.n_scenes

    def anomaly_intervals(self, i: int) -> tuple[tuple[int, int], ...]:
        """Test intervals in this source's frame coordinates (rescaled when shortened)."""
        t = int(self.table_index[i])
        real = self.table.anomaly_frames[t]
        m, real_m = int(self.lengths[i]), int(self.table.n_segments[t])
        if m == real_m or not real:
            return real
        # Rescale to the shortened video; keep the dataset's convention.
        conv = INTERVAL_CONVENTION[self.dataset]
        nf, real_nf = FRAMES_PER_SEGMENT * m, int(self.table.n_frames[t])
        out = []
        for s, e in real:
            stop = min(e + 1 if conv == "inclusive" else e, real_nf)
            a = min(int(s * nf / real_nf), nf - 1)
            b = min(nf, max(a + 1, int(np.ceil(stop * nf / real_nf))))
            out.append((a, b - 1) if conv == "inclusive" else (a, b))
        return tuple(out)

    def expected_frames(self, i: int) -> int | None:
        if self.shortened:
            return FRAMES_PER_SEGMENT * int(self.lengths[i])
        return super().expected_frames(i)

    def true_segment_labels(self, i: int) -> np.ndarray:
        """``[m_i] uint8`` true segment labels (test: from the frame ground truth)."""
        t = int(self.table_index[i])
        m = int(self.lengths[i])
        if not self.table.anomalous[t]:
            return np.zeros(m, np.uint8)
        if self.part == "test":
            frames = interval_labels(
                self.anomaly_intervals(i), FRAMES_PER_SEGMENT * m,
                INTERVAL_CONVENTION[self.dataset], self.names[i],
            )
            return segment_labels_from_frames(frames)
        labels_pool = _test_interval_pool(self.dataset)
        primary = _event_labels(self.dataset, self.table.classes[t])[0]
        pool = labels_pool.get(primary) or labels_pool["*"]
        return _windows_from_pool(pool, m, self._rng(t, 0))

    def anomaly_signal(self, i: int) -> np.ndarray:
        """``[m_i]`` the generator's anomaly amplitude (0 outside anomalies)."""
        return self._video(i)[1]

    # -- features ----------------------------------------------------------

    def _video(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(features ``[m, crops, D] float32``, anomaly amplitude ``[m]``)."""
        cfg, gm = self.config, self._model
        t = int(self.table_index[i])
        m, D, C = int(self.lengths[i]), cfg.feature_dim, cfg.crops
        s = self.scene(i)
        labels = self.true_segment_labels(i)
        rng = self._rng(t, 1)

        phi = float(np.clip(cfg.smoothness + 0.04 * rng.standard_normal(), 0.0, 0.99))
        gain = float(gm.scene_gain[s] * np.exp(cfg.gain_spread / np.sqrt(2.0) * rng.standard_normal()
                                               - cfg.gain_spread**2 / 2.0))
        offset = cfg.video_spread / np.sqrt(2.0) * gm.orth(gm.between * rng.standard_normal(D))
        # Relative direction change y [m, D] (float32: generation is memory bound):
        # the smooth latent part and the white part, both ⊥ the norm direction.
        smooth = np.sqrt(1.0 - cfg.noise_share) * cfg.variation
        y = _ar1(rng, m, cfg.rank, phi).astype(np.float32) @ (smooth * gm.scene_basis[s])
        y += (gm.scene_offset[s] + offset).astype(np.float32)
        noise = rng.standard_normal((m, D), dtype=np.float32)
        noise *= (gm.within * np.sqrt(cfg.noise_share) * cfg.variation).astype(np.float32)
        # Footage quality varies per video; anomalous videos are, on average,
        # shakier/noisier footage (the dataset-level bias of ``video_bias``).
        bias = cfg.video_bias if self.table.anomalous[t] else 0.0
        noise *= float(gm.scene_noise[s] * np.exp(0.15 * rng.standard_normal() + bias))
        y += noise
        # Activity: the relative norm change, AR(1).
        act = cfg.activity * _ar1(rng, m, 1, cfg.activity_smoothness)[:, 0]
        amplitude = np.zeros(m)
        # Separate streams: changing an anomaly/burst knob leaves every other
        # random draw of the video unchanged.
        event_rng = self._rng(t, 2)
        if labels.any():
            evs = _event_labels(self.dataset, self.table.classes[t])
            params = [gm.event(e) for e in evs]
            pattern = np.mean([p[0] for p in params], axis=0)
            dyn = np.mean([p[1] for p in params], axis=0)
            strength, no_rise_p = params[0][2], params[0][3]
            no_rise = event_rng.random() < no_rise_p
            video_amp = float(np.exp(0.3 * event_rng.standard_normal()))
            env = _envelope(labels, event_rng)
            amplitude = cfg.strength * strength * video_amp * env
            eta = _ar1(event_rng, m, dyn.shape[0], cfg.anomaly_smoothness)
            idx = np.flatnonzero(env > 0)
            shift = pattern[None, :] + cfg.anomaly_variation * (eta[idx] @ dyn)
            y[idx] += (cfg.variation * amplitude[idx, None] * shift).astype(np.float32)
            if not no_rise:
                act = act + cfg.rise * strength * video_amp * env
        elif event_rng.random() < cfg.burst_fraction:
            pool = _test_interval_pool(self.dataset)["*"]
            burst = _windows_from_pool(pool, m, event_rng)
            level = cfg.burst_strength * cfg.rise * float(np.exp(0.3 * event_rng.standard_normal()))
            benv = _envelope(burst, event_rng)
            act = act + level * benv
            y += (cfg.variation * 0.5 * benv[:, None] * gm.burst_pattern).astype(np.float32)
        # The feature: direction μ ⊙ exp(y), norm gain · mean_norm · exp(a_t).
        x = np.exp(y, out=y)
        x *= gm.mean
        norm = (gain * cfg.mean_norm) * np.exp(act - cfg.activity**2 / 2.0)
        x *= (norm / np.linalg.norm(x, axis=1)).astype(np.float32)[:, None]
        x[x < (gm.zero_level * norm).astype(np.float32)[:, None]] = 0.0
        if C == 1:
            return x[:, None, :], amplitude
        # Crops: relative (log-scale) deviations centred over crops, so that
        # their geometric mean is x.
        dev = rng.standard_normal((m, C, D), dtype=np.float32)
        dev *= (gm.within * np.sqrt(max(cfg.crop_variation**2 - CROP_ACTIVITY**2, 0.0))).astype(np.float32)
        dev = gm.orth(dev)
        dev += CROP_ACTIVITY * rng.standard_normal((m, C, 1), dtype=np.float32)
        dev -= dev.mean(axis=1, keepdims=True)
        out = np.exp(dev, out=dev)
        out *= x[:, None, :]
        return out, amplitude

    def _read(self, i: int) -> np.ndarray:
        feats = self._video(i)[0]
        if self.crop_mode == "mean":
            return feats.mean(axis=1, keepdims=True)
        return feats
