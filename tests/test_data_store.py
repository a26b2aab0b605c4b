"""PackedFeatures: row reads from files equal the sources' own reads, bit for bit."""

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clapjax.data import ConcatenatedSource, DataError, NpyFilesSource, SyntheticConfig, open_source
from clapjax.data.store import PackedFeatures, row_range

LENGTHS = [5, 1, 12, 7, 3]
C, D = 3, 6


def _features(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((m, C, D)) * rng.uniform(0.1, 50)).astype(np.float64) for m in LENGTHS]


def _write_layout(tmp, layout, dtype):
    """Writes the videos in one public layout; returns (files or (array, ranges), names)."""
    feats = _features()
    names = [f"v{i}" for i in range(len(feats))]
    tmp.mkdir(parents=True, exist_ok=True)
    if layout == "video":
        files = []
        for n, f in zip(names, feats):
            np.save(tmp / f"{n}_i3d.npy", f.astype(dtype))
            files.append([tmp / f"{n}_i3d.npy"])
        return files, names
    if layout == "video2d":
        files = []
        for n, f in zip(names, feats):
            np.save(tmp / f"{n}.npy", f[:, 0].astype(dtype))
            files.append([tmp / f"{n}.npy"])
        return files, names
    if layout == "fortran":
        files = []
        for n, f in zip(names, feats):
            np.save(tmp / f"{n}.npy", np.asfortranarray(f.astype(dtype)))
            files.append([tmp / f"{n}.npy"])
        return files, names
    if layout == "crops_first":
        files = []
        for n, f in zip(names, feats):
            np.save(tmp / f"{n}_i3d.npy", np.ascontiguousarray(f.transpose(1, 0, 2)).astype(dtype))
            files.append([tmp / f"{n}_i3d.npy"])
        return files, names
    if layout == "text":
        files = []
        for n, f in zip(names, feats):
            np.savetxt(tmp / f"{n}.txt", f[:, 0].astype(dtype))
            files.append([tmp / f"{n}.txt"])
        return files, names
    if layout == "crops":
        files = []
        for n, f in zip(names, feats):
            paths = []
            for c in range(C):
                np.save(tmp / f"{n}__{c}.npy", np.ascontiguousarray(f[:, c]).astype(dtype))
                paths.append(tmp / f"{n}__{c}.npy")
            files.append(paths)
        return files, names
    if layout == "concatenated":
        allf = np.concatenate(feats).astype(dtype)
        np.save(tmp / "all.npy", allf)
        ends = np.cumsum(LENGTHS)
        # Videos listed out of array order, with a gap, to exercise offsets.
        ranges = np.stack([ends - LENGTHS, ends], axis=1)[::-1].copy()
        return (tmp / "all.npy", ranges), names[::-1]
    raise ValueError(layout)


def _source(tmp, layout, dtype, crops):
    spec, names = _write_layout(tmp, layout, dtype)
    if layout == "concatenated":
        return ConcatenatedSource(spec[0], spec[1], names, "ucf", "train", crops=crops)
    if layout == "crops_first":
        return NpyFilesSource(spec, names, "ucf", "train", crops=crops, layout="crops_first")
    return NpyFilesSource(spec, names, "ucf", "train", crops=crops)


def _source_with_value(tmp, at, value):
    """Float32 ``(m, C, D)`` files of the videos with ``value`` at ``at = (video, segment, crop, dim)``."""
    feats = _features()
    feats[at[0]][at[1:]] = value
    files = []
    for i, f in enumerate(feats):
        np.save(tmp / f"v{i}.npy", f.astype(np.float32))
        files.append([tmp / f"v{i}.npy"])
    return NpyFilesSource(files, [f"v{i}" for i in range(len(feats))], "ucf", "train")


LAYOUTS = ["video", "video2d", "crops", "crops_first", "concatenated", "fortran", "text"]
DTYPES = [np.float32, np.float16, np.float64, ">f4"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("crops", ["keep", "mean"])
def test_store_reads_equal_source_reads(tmp_path, layout, dtype, crops):
    src = _source(tmp_path / "f", layout, dtype, crops)
    order = np.array([3, 0, 4, 1, 2])
    packed, _ = src.read_many(order)
    store = PackedFeatures(src, order, io_threads=3)
    assert store.shape == packed.shape and store.dtype == np.float32
    assert (src.row_pieces(0) is None) == (layout in ("fortran", "text"))
    np.testing.assert_array_equal(store[:], packed)  # bitwise (assert_array_equal: exact)
    assert store[:].tobytes() == packed.tobytes()
    rng = np.random.default_rng(1)
    rows = rng.integers(0, packed.shape[0], size=(4, 9))
    assert store[rows].shape == (4, 9) + packed.shape[1:]
    assert store[rows].tobytes() == packed[rows].tobytes()
    assert store[-1].tobytes() == packed[-1].tobytes()
    store.close()


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_views_and_gathers_on_ragged_packing(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("h")
    src = _source(tmp, data.draw(st.sampled_from(["video", "crops"])), np.float32,
                  data.draw(st.sampled_from(["keep", "mean"])))
    order = np.asarray(data.draw(st.permutations(range(len(LENGTHS)))))
    packed, _ = src.read_many(order)
    store = PackedFeatures(src, order, io_threads=data.draw(st.integers(1, 4)))
    s = packed.shape[0]
    a = data.draw(st.integers(0, s))
    b = data.draw(st.integers(a, s))
    view = row_range(store, a, b)
    assert isinstance(view, PackedFeatures) and view.shape[0] == b - a
    np.testing.assert_array_equal(view[:], packed[a:b])
    if b > a:
        rows = np.asarray(data.draw(st.lists(st.integers(0, b - a - 1), max_size=40)), np.int64)
        np.testing.assert_array_equal(view[rows], packed[a:b][rows])
    np.testing.assert_array_equal(row_range(packed, a, b), packed[a:b])
    store.close()


def test_store_is_never_materialised_implicitly(tmp_path):
    store = PackedFeatures(_source(tmp_path, "video", np.float32, "keep"))
    with pytest.raises(TypeError, match="never converted implicitly"):
        np.asarray(store)
    with pytest.raises(IndexError):
        store[np.array([store.shape[0]])]
    with pytest.raises(IndexError):
        store[::2]
    assert store.read().shape == store.shape


def test_non_finite_rows_name_video_file_and_segment(tmp_path):
    store = PackedFeatures(_source_with_value(tmp_path, (2, 4, 1, 3), np.nan))
    row = int(np.cumsum(LENGTHS)[1]) + 4
    with pytest.raises(DataError, match=r"video 'v2' \(file .*v2.npy\).*segment 4"):
        store[np.array([0, row])]
    with pytest.raises(DataError, match="'v2'"):
        store[:]
    # Other videos read fine, and are marked checked once read whole.
    store[0:5]
    assert store._reader.verified[0]


def test_truncated_file_is_a_clear_error(tmp_path):
    src = _source(tmp_path, "video", np.float32, "keep")
    path = src.files[2][0]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    store = PackedFeatures(src)
    with pytest.raises(DataError, match="truncated"):
        store[:]


def test_synthetic_source_reads_through_the_source():
    cfg = SyntheticConfig.preset("tiny")
    src = open_source("ucf", "train", synthetic=cfg, videos=[0, 5, 900])
    packed, _ = src.read_many([2, 0, 1])
    store = PackedFeatures(src, [2, 0, 1])
    np.testing.assert_array_equal(store[:], packed)
    rows = np.array([5, 0, 40, 3])
    np.testing.assert_array_equal(store[rows], packed[rows])


@pytest.mark.parametrize("layout, dtype", [("video", np.float16), ("crops", np.float32), ("video", np.float32)])
def test_conversions_in_bounded_pieces_are_the_same_bits(tmp_path, monkeypatch, layout, dtype):
    from clapjax.data import store as store_lib

    monkeypatch.setattr(store_lib, "RAW_CHUNK_BYTES", 100)  # a few rows per conversion
    src = _source(tmp_path, layout, dtype, "mean")
    packed, _ = src.read_many(np.arange(5))
    store = PackedFeatures(src, io_threads=1)
    assert store[:].tobytes() == packed.tobytes()
    rows = np.array([0, 0, 3, 3, 3, 20, 4, 5, 6, 7, 27, 27])  # repeats and runs
    assert store[rows].tobytes() == packed[rows].tobytes()


def test_a_dropped_store_releases_its_threads_and_files(tmp_path):
    import gc
    import threading

    src = _source(tmp_path, "video", np.float32, "keep")
    before = set(threading.enumerate())
    store = PackedFeatures(src, io_threads=4)
    store[:]
    mine = set(threading.enumerate()) - before
    assert mine
    fds = dict(store._reader._fds)
    assert fds
    del store
    gc.collect()
    assert not any(t.is_alive() for t in mine)
    for fd in fds.values():
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_failed_read_leaves_no_read_running(tmp_path):
    """The error of one reader task is raised only after the call's other
    tasks have ended or been cancelled (none keeps reading behind the caller)."""
    import threading
    import time

    store = PackedFeatures(_source_with_value(tmp_path, (0, 0, 0, 0), np.inf), io_threads=2)
    reader = store._reader
    runs_of, lock, active, started = reader._runs, threading.Lock(), [0], []
    other_reading = threading.Event()

    def slow_runs(runs, out):
        with lock:
            active[0] += 1
            started.append(runs)
        try:
            if 0 in runs[:, 0]:
                other_reading.wait(10)  # fail only once another task is reading
            else:
                other_reading.set()
                time.sleep(0.2)  # still reading when the other task fails
            runs_of(runs, out)
        finally:
            with lock:
                active[0] -= 1

    reader._runs = slow_runs
    rows = np.arange(0, store.shape[0], 2)  # one run per row: several tasks per call
    with pytest.raises(DataError, match="'v0'"):
        store[rows]
    assert len(started) >= 2
    assert active[0] == 0  # every task that started has ended
    n_started = len(started)
    time.sleep(0.5)
    assert len(started) == n_started  # and none starts after the error


def test_a_store_dropped_in_its_own_reader_thread_closes_cleanly(tmp_path, monkeypatch):
    """The last reference can go in a reader thread (a task's arguments are
    dropped there); the store's threads then exit without joining themselves."""
    import sys
    import threading

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    src = _source(tmp_path, "video", np.float32, "keep")
    before = set(threading.enumerate())
    store = PackedFeatures(src, io_threads=2)
    store[:]
    fds = dict(store._reader._fds)
    go = threading.Event()
    task = store._reader._pool.submit(lambda keep=store: go.wait(10))
    mine = set(threading.enumerate()) - before  # the reader thread running the task
    assert mine
    del store  # the pending task holds the only reference now
    go.set()
    task.result(timeout=10)
    for t in mine:
        t.join(timeout=10)  # the store's finalizer ran in it, before it ended
    assert not any(t.is_alive() for t in mine)
    assert unraisable == []
    for fd in fds.values():
        with pytest.raises(OSError):
            os.fstat(fd)


def test_reader_threads_never_parse_file_headers(tmp_path):
    """Row locations (.npy headers, parsed with the thread-unsafe ``ast`` on
    CPython 3.11) are looked up in the caller's thread only."""
    import threading

    src = _source(tmp_path, "video", np.float32, "keep")
    threads = []
    row_pieces = src.row_pieces

    def recording(i):
        threads.append(threading.get_ident())
        return row_pieces(i)

    src.row_pieces = recording
    store = PackedFeatures(src, io_threads=4)
    packed, _ = src.read_many(np.arange(5))
    rows = np.arange(store.shape[0])[::-1]  # reversed: one run per row, every video
    np.testing.assert_array_equal(store[rows], packed[rows])
    assert len(threads) == 5 and set(threads) == {threading.get_ident()}


def test_whole_video_reads_run_one_at_a_time(tmp_path):
    """Sources read through ``source.read`` (here Fortran-ordered files) parse
    .npy headers inside it, so reader threads call it one at a time."""
    import threading
    import time

    src = _source(tmp_path, "fortran", np.float32, "keep")
    lock, active, most = threading.Lock(), [0], [0]
    read = src.read

    def recording(i):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.02)
            return read(i)
        finally:
            with lock:
                active[0] -= 1

    src.read = recording
    store = PackedFeatures(src, io_threads=4)
    packed, _ = src.read_many(np.arange(5))
    rows = np.arange(store.shape[0])[::-1]
    np.testing.assert_array_equal(store[rows], packed[rows])
    assert most[0] == 1
