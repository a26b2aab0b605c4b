"""Row access to features on disk: many per-video files seen as one packed array.

:class:`PackedFeatures` presents chosen videos of a feature source, packed in
the given order, as one read-only array-like ``[S, crops, D] float32``
without reading anything when it is created:

* ``store[a:b]`` reads the contiguous rows ``[a, b)``;
* ``store[rows]`` (an integer array of any shape) gathers those rows, e.g.
  one streamed chunk of training batches ``[K, T, B]``;
* ``store.view(a, b)`` is a lazy sub-range (e.g. one participant's rows).

Rows are read with positioned reads (``os.preadv``) straight into the output
buffer, in a small thread pool (the reads release the GIL, so several are in
flight at once, which random rows on an SSD need). Consecutive rows that land
consecutively in the output are read with one call. Nothing is
memory-mapped, so the process holds only the rows asked for; the rest stays
in the kernel's page cache, which is not part of the process's resident set
and is given back under memory pressure.

Where the rows of a video sit comes from the source (``row_pieces``): one
piece per ``(m, crops, D)`` / ``(m, D)`` file or concatenated array, one per
crop file. The crop handling mirrors the source's own ``read`` exactly
(``crops="keep"``: cast to float32; ``"mean"``: float32 mean over crops in
crop order), so a store returns the same bits as ``source.read``
(tested per layout). A source without ``row_pieces`` (the synthetic
generator, or files that need a whole-video decode such as Fortran-ordered
arrays or ``nonfinite="drop"``) is read through ``source.read`` one video at
a time, which is correct but re-reads the whole video for every gather.

Non-finite values raise :class:`~clapjax.data.DataError` naming the video,
file and segment, like the sources; a video is checked until it has once been
read whole (the statistics stage reads every training video whole first, so
later training gathers skip the check). A read that fails raises once every
other read of the same call has ended or been cancelled: nothing keeps
reading behind the caller.

Threads: ``.npy`` headers are parsed with ``ast.literal_eval``, which CPython
3.11 cannot run in two threads at once, so the reader threads never parse:
row locations are looked up in the calling thread, and whole-video reads
through ``source.read`` take one lock.
"""

from __future__ import annotations

import concurrent.futures
import os
import resource
import threading
import weakref
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from numpy.typing import ArrayLike

from clapjax.data.validation import DataError

__all__ = ["PackedFeatures", "RowPiece", "npy_data_layout", "row_range"]

#: Default number of reader threads.
IO_THREADS = 8
#: Largest temporary of stored rows when they need a conversion (dtype, crop mean).
RAW_CHUNK_BYTES = 16 << 20
#: Reads smaller than this go through descriptors without kernel readahead.
RANDOM_READ_BYTES = 1 << 20


class RowPiece(NamedTuple):
    """Where one block of crops of every row of one video sits in a file.

    Row ``j`` of the video holds ``crops × D`` contiguous values of ``dtype``
    starting at byte ``offset + j · row_stride`` of ``path``. A video is one
    piece (all crops in one row, e.g. an ``(m, crops, D)`` file) or several
    (e.g. one ``(m, D)`` file per crop), concatenated along the crop axis.

    Attributes:
      path: the file.
      offset: byte offset of row 0.
      row_stride: bytes from one row to the next.
      crops: crops per row in this piece.
      dtype: stored dtype (any byte order).
    """

    path: str
    offset: int
    row_stride: int
    crops: int
    dtype: np.dtype


def npy_data_layout(path: str | Path) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """``(data byte offset, shape, dtype, fortran_order)`` of an ``.npy`` file's header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        return fh.tell(), tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran)


def _aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """Uninitialised 64-byte aligned float32 array (zero-copy ``device_put`` on CPU)."""
    n = int(np.prod(shape)) * 4
    buf = np.empty(n + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    return buf[off : off + n].view(np.float32).reshape(shape)


def _read_exact(fd: int, buf: np.ndarray, offset: int, path: str) -> None:
    view = memoryview(buf.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise DataError(f"file {path}: ends at byte {offset + done}, expected {offset + len(view)} bytes "
                            f"(truncated or changed since the source was opened)")
        done += n


def _release(pool: concurrent.futures.ThreadPoolExecutor, fds: dict, lock: threading.Lock,
             pool_threads: set) -> None:
    # The last reference to a store can go in one of its own reader threads
    # (a task's bound method is dropped there after the caller got its
    # result), and a thread cannot join itself. No task is left then (a
    # queued task would keep the store alive), so the threads are only told
    # to exit and the descriptors can be closed.
    pool.shutdown(wait=threading.get_ident() not in pool_threads)
    with lock:
        for fd in fds.values():
            os.close(fd)
        fds.clear()


class _Reader:
    """Shared state of a store and its views: source, packing, files, threads."""

    def __init__(self, source: Any, videos: np.ndarray, io_threads: int):
        self.source = source
        self.videos = videos
        self.lengths = np.asarray(source.lengths, np.int64)[videos]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.crops = int(source.crops)
        self.feature_dim = int(source.feature_dim)
        self.mode = getattr(source, "crop_mode", "keep")
        self.names = [source.names[int(i)] for i in videos]
        self._pieces: list[Any] = [None] * len(videos)
        self.verified = np.zeros(len(videos), bool)
        self._lock = threading.Lock()
        self._meta_lock = threading.Lock()
        self._fds: dict[tuple[str, bool], int] = {}
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._max_fds = max(16, min(4096, (soft if soft > 0 else 1024) // 4))
        self.io_threads = max(1, int(io_threads))
        pool_threads: set[int] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.io_threads, thread_name_prefix="clapjax-io",
            initializer=lambda: pool_threads.add(threading.get_ident()))
        self._fallback = threading.local()
        # Threads and descriptors go when the store does (or at close()).
        self._finalizer = weakref.finalize(self, _release, self._pool, self._fds, self._lock, pool_threads)

    # ------------------------------------------------------------ metadata
    def pieces(self, v: int):
        p = self._pieces[v]
        if p is None:
            # One thread at a time (see read(): the .npy header parser is not
            # thread-safe on CPython 3.11).
            with self._meta_lock:
                p = self._pieces[v]
                if p is None:
                    fn = getattr(self.source, "row_pieces", None)
                    got = fn(int(self.videos[v])) if fn is not None else None
                    p = tuple(got) if got else False
                    self._pieces[v] = p
        return p

    def _fd(self, path: str, nbytes: int) -> tuple[int, bool]:
        """``(fd, cached)`` for a read of ``nbytes``: a cached descriptor, or a
        temporary one to close after use.

        Reads below ``RANDOM_READ_BYTES`` (single rows of shuffled batches) use
        a descriptor advised ``POSIX_FADV_RANDOM``: the kernel's readahead
        would otherwise read several times the row around every random row
        (measured: 1.5x the gathered bytes from storage). Larger reads keep
        readahead, which prefetches the next chunk of a long video.
        """
        key = (path, nbytes < RANDOM_READ_BYTES)
        fd = self._fds.get(key)
        if fd is not None:
            return fd, True
        fd = os.open(path, os.O_RDONLY)
        if key[1] and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        with self._lock:
            if key in self._fds:
                os.close(fd)
                return self._fds[key], True
            if len(self._fds) < self._max_fds:
                self._fds[key] = fd
                return fd, True
        return fd, False

    def close(self) -> None:
        self._finalizer()

    # ------------------------------------------------------------ reading
    def _raw(self, piece: RowPiece, start: int, count: int) -> np.ndarray:
        """``[count, piece.crops, D]`` rows as stored (piece dtype)."""
        d = self.feature_dim
        row_bytes = piece.crops * d * piece.dtype.itemsize
        raw = np.empty(count * row_bytes, np.uint8)
        fd, cached = self._fd(piece.path, raw.nbytes)
        try:
            if piece.row_stride == row_bytes:
                _read_exact(fd, raw, piece.offset + start * piece.row_stride, piece.path)
            else:
                rows = raw.reshape(count, row_bytes)
                for j in range(count):
                    _read_exact(fd, rows[j], piece.offset + (start + j) * piece.row_stride, piece.path)
        finally:
            if not cached:
                os.close(fd)
        return raw.view(piece.dtype).reshape(count, piece.crops, d)

    def _video_rows(self, v: int, start: int, count: int, out: np.ndarray) -> None:
        """Rows ``[start, start + count)`` of packed video ``v`` into ``out [count, C, D]``."""
        pieces = self.pieces(v)
        if pieces is False:
            out[...] = self._fallback_video(v)[start : start + count]
            return
        p0 = pieces[0]
        native = p0.dtype == np.dtype(np.float32) and p0.dtype.isnative
        if len(pieces) == 1 and self.mode == "keep" and native and p0.row_stride == p0.crops * self.feature_dim * 4:
            fd, cached = self._fd(p0.path, out.nbytes)
            try:
                _read_exact(fd, out, p0.offset + start * p0.row_stride, p0.path)
            finally:
                if not cached:
                    os.close(fd)
            return
        # Conversions go through a temporary of the stored rows: bound it.
        step = max(1, RAW_CHUNK_BYTES // (self.file_crops(pieces) * self.feature_dim * p0.dtype.itemsize))
        if count > step:
            for a in range(0, count, step):
                self._video_rows(v, start + a, min(step, count - a), out[a : a + step])
            return
        # The same expressions as the sources' crop handling (bitwise equal reads).
        if len(pieces) == 1:
            raw = self._raw(p0, start, count)
            if self.mode == "mean":
                out[...] = raw.mean(axis=1, keepdims=True, dtype=np.float32)
            else:
                out[...] = raw
            return
        if self.mode == "mean" and len({p.path for p in pieces}) == 1:
            # Crops of one array (crops-first file): the array's mean.
            raw = np.concatenate([self._raw(p, start, count) for p in pieces], axis=1)
            out[...] = raw.mean(axis=1, keepdims=True, dtype=np.float32)
            return
        if self.mode == "mean":
            # One file per crop: the sources accumulate crop after crop.
            acc = np.zeros((count, self.feature_dim), np.float32)
            for p in pieces:
                acc += self._raw(p, start, count)[:, 0]
            out[...] = (acc / np.float32(len(pieces)))[:, None, :]
            return
        c = 0
        for p in pieces:
            out[:, c : c + p.crops] = self._raw(p, start, count)
            c += p.crops

    @staticmethod
    def file_crops(pieces) -> int:
        return sum(p.crops for p in pieces)

    def _fallback_video(self, v: int) -> np.ndarray:
        cache = self._fallback
        if getattr(cache, "v", None) != v:
            # One whole-video read at a time: it may parse an .npy header
            # (np.load), which two threads must not do at once (see read()).
            with self._meta_lock:
                cache.v, cache.data = v, self.source.read(int(self.videos[v]))
        return cache.data

    def _check(self, v: int, start: int, rows: np.ndarray) -> None:
        ok = np.isfinite(rows.reshape(rows.shape[0], -1)).all(axis=1)
        if not ok.all():
            pieces = self.pieces(v)
            file = f" (file {pieces[0].path})" if pieces else ""
            bad = np.flatnonzero(~ok)
            raise DataError(
                f"video {self.names[v]!r}{file}: {bad.size} segment(s) read here hold NaN or inf, "
                f"first at segment {start + int(bad[0])} (fix the features, or drop such segments: "
                "--nonfinite drop on the command line, nonfinite='drop' in open_source; training "
                "features only)")
        if start == 0 and rows.shape[0] == self.lengths[v]:
            self.verified[v] = True

    def _runs(self, runs: np.ndarray, out: np.ndarray) -> None:
        for v, start, count, at in runs.tolist():
            dst = out[at : at + count]
            self._video_rows(v, start, count, dst)
            if not self.verified[v]:
                self._check(v, start, dst)

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``[n, C, D] float32`` packed rows ``rows [n] int64`` (any order, repeats
        allowed), into ``out`` (C-contiguous float32) or a new aligned array."""
        n = rows.size
        shape = (n, self.crops, self.feature_dim)
        if out is None:
            out = _aligned_empty(shape)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, "
                             f"got {out.dtype} {out.shape}")
        if n == 0:
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        # Repeated rows (e.g. masked batch slots) are read once and copied.
        repeat = np.concatenate([[False], np.diff(srt) == 0])
        copies = None
        if repeat.any():
            first = np.maximum.accumulate(np.where(repeat, 0, np.arange(n)))
            copies = (order[repeat], order[first[repeat]])
            order, srt = order[~repeat], srt[~repeat]
        vid = np.searchsorted(self.offsets, srt, side="right") - 1
        local = srt - self.offsets[vid]
        # A run continues while the next sorted row is the next row of the same
        # video AND goes to the next output slot (so one read fills it).
        cont = (np.diff(srt) == 1) & (np.diff(vid) == 0) & (np.diff(order) == 1)
        starts = np.flatnonzero(np.concatenate([[True], ~cont]))
        counts = np.diff(np.concatenate([starts, [srt.size]]))
        runs = np.stack([vid[starts], local[starts], counts, order[starts]], axis=1)
        # Where each video's rows sit is looked up here, in the calling
        # thread, never in the reader threads: the .npy header parser
        # (ast.literal_eval) is not thread-safe on CPython 3.11 ("AST
        # constructor recursion depth mismatch" when two threads parse at
        # once). A run reads every training video whole in its main thread
        # (statistics stage) before training, so training's background
        # gathers find every header already parsed.
        for v in np.unique(runs[:, 0]).tolist():
            self.pieces(v)
        self._dispatch(runs, counts, out)
        if copies is not None:
            out[copies[0]] = out[copies[1]]
        return out

    def _dispatch(self, runs: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
        # Split into batches of similar byte counts, one per thread task.
        workers = self.io_threads
        if len(runs) == 1 or workers == 1:
            self._runs(runs, out)
            return
        # Batches of similar row counts, two per thread (so one slow read does
        # not leave the other threads idle).
        cum = np.cumsum(counts)
        cuts = np.searchsorted(cum, np.linspace(0, cum[-1], 2 * workers + 1)[1:-1], side="right")
        futures = [self._pool.submit(self._runs, part, out) for part in np.split(runs, cuts) if len(part)]
        # Every task has ended or been cancelled before an error is raised: a
        # failed read must not leave reads of the same call running behind the
        # caller (they would write into ``out``, hold files and keep the store
        # alive after the error).
        _, pending = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        concurrent.futures.wait(pending)
        for f in futures:
            if not f.cancelled():
                f.result()


class PackedFeatures:
    """Videos of a feature source packed in order, as a read-only ``[S, C, D]`` array-like.

    Args:
      source: a ``clapjax.data`` feature source (``lengths``, ``crops``,
        ``feature_dim``, ``names``; ``row_pieces(i)`` for direct row reads).
      videos: source positions of the packed videos, in packing order
        (default: all, in source order).
      io_threads: reader threads (default ``IO_THREADS``).

    Attributes:
      shape: ``(S, crops, D)``; dtype: float32.
      lengths: ``[N] int64`` segments per packed video.
    """

    def __init__(self, source: Any, videos: ArrayLike | None = None, *, io_threads: int | None = None,
                 _reader: _Reader | None = None, _range: tuple[int, int] | None = None):
        if _reader is None:
            vids = (np.arange(len(source.names), dtype=np.int64) if videos is None
                    else np.asarray(videos, np.int64).reshape(-1))
            if vids.size and (vids.min() < 0 or vids.max() >= len(source.names)):
                raise IndexError(f"video positions must be in [0, {len(source.names)})")
            _reader = _Reader(source, vids, IO_THREADS if io_threads is None else io_threads)
        self._reader = _reader
        total = int(_reader.offsets[-1])
        self._lo, self._hi = _range if _range is not None else (0, total)
        self.shape = (self._hi - self._lo, _reader.crops, _reader.feature_dim)
        self.dtype = np.dtype(np.float32)

    # ---------------------------------------------------------- array-like
    ndim = 3
    itemsize = 4

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * 4

    @property
    def lengths(self) -> np.ndarray:
        return self._reader.lengths

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"PackedFeatures(shape={self.shape}, videos={len(self._reader.lengths)})"

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            f"PackedFeatures {self.shape} is read from disk on demand and is never converted "
            f"implicitly; read rows with store[a:b] / store[rows], or everything with store.read()")

    def view(self, start: int, stop: int) -> "PackedFeatures":
        """Lazy rows ``[start, stop)`` of this store (nothing is read)."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise IndexError(f"rows [{start}, {stop}) outside [0, {self.shape[0]})")
        return PackedFeatures(None, _reader=self._reader, _range=(self._lo + start, self._lo + stop))

    def read(self, out: np.ndarray | None = None) -> np.ndarray:
        """All rows ``[S, C, D] float32`` (materialises the store), into ``out``
        (a C-contiguous float32 array of this shape) or a new aligned array."""
        rows = np.arange(self._lo, self._hi, dtype=np.int64)
        return self._reader.read(rows, out)

    def __getitem__(self, index) -> np.ndarray:
        s = self.shape[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(s)
            if step != 1:
                raise IndexError("PackedFeatures slices must have step 1")
            rows = np.arange(self._lo + start, self._lo + max(start, stop), dtype=np.int64)
            return self._reader.read(rows)
        if isinstance(index, (int, np.integer)):
            i = int(index) + (s if int(index) < 0 else 0)
            if not 0 <= i < s:
                raise IndexError(f"row {int(index)} outside [0, {s})")
            return self._reader.read(np.asarray([self._lo + i], np.int64))[0]
        idx = np.asarray(index)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"PackedFeatures takes a slice or integer row indices, got {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < -s or flat.max() >= s):
            raise IndexError(f"row index out of range [0, {s})")
        flat = np.where(flat < 0, flat + s, flat) + self._lo
        return self._reader.read(flat).reshape(idx.shape + self.shape[1:])

    def close(self) -> None:
        """Closes the files and threads (shared with every view of the store)."""
        self._reader.close()


def row_range(features: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` without reading: an ndarray view or a store view."""
    if isinstance(features, PackedFeatures):
        return features.view(start, stop)
    return features[start:stop]

