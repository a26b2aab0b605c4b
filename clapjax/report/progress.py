"""Terminal progress: one line per round, a stage indicator, quiet/JSON modes.

Modes:
  * ``"normal"``: info and per-round lines on stdout, stage indicators on stderr;
  * ``"quiet"``: only the final result line on stdout (errors still go to stderr);
  * ``"json"``: JSON lines only, on stdout (``{"event": "round", ...}``,
    ``{"event": "stage", ...}``, ``{"event": "summary", ...}``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any, Iterator, Literal, Mapping, TextIO

from clapjax.report.rundir import to_jsonable

Mode = Literal["normal", "quiet", "json"]


def format_seconds(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``"?"`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


class Stage:
    """Handle of a running stage; ``update(done)`` refreshes the indicator."""

    def __init__(self, reporter: "Reporter", name: str, total: int | None):
        self.reporter = reporter
        self.name = name
        self.total = total
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, done: int | None = None, advance: int = 1) -> None:
        """Sets (or advances) the completed count and redraws at most 10x/s."""
        self.done = self.done + advance if done is None else done
        now = time.perf_counter()
        if now - self._last_draw >= 0.1 or (self.total and self.done >= self.total):
            self._last_draw = now
            self.reporter._draw_stage(self)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Reporter:
    """Prints run progress according to a mode.

    Args:
      mode: ``"normal"``, ``"quiet"`` or ``"json"``.
      out: stream for results (stdout).
      err: stream for stage indicators (stderr).
    """

    def __init__(self, mode: Mode = "normal", out: TextIO | None = None, err: TextIO | None = None):
        if mode not in ("normal", "quiet", "json"):
            raise ValueError(f"progress mode must be normal, quiet or json, got {mode!r}")
        self.mode = mode
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self._tty = bool(getattr(self.err, "isatty", lambda: False)())

    def _emit_json(self, event: str, payload: Mapping[str, Any]) -> None:
        print(json.dumps({"event": event, **to_jsonable(dict(payload))}, allow_nan=False),
              file=self.out, flush=True)

    def info(self, message: str, **fields: Any) -> None:
        """A one-off line (run directory, resume point, data description)."""
        if self.mode == "normal":
            print(message, file=self.out, flush=True)
        elif self.mode == "json" and fields:
            self._emit_json("info", fields)

    def warn(self, message: str) -> None:
        """A warning: stderr in every mode (JSON mode also gets an event)."""
        if self.mode == "json":
            self._emit_json("warning", {"message": message})
        else:
            print(f"warning: {message}", file=self.err, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Stage]:
        """Context manager around a long stage (statistics, generation, ...)."""
        st = Stage(self, name, total)
        if self.mode == "normal":
            self._draw_stage(st)
        yield st
        if self.mode == "normal":
            end = "\n"
            prefix = "\r\033[K" if self._tty else ""
            count = f" {st.done}/{st.total}" if st.total else ""
            print(f"{prefix}  {name}{count} done in {format_seconds(st.elapsed)}",
                  file=self.err, end=end, flush=True)
        elif self.mode == "json":
            self._emit_json("stage", {"name": name, "seconds": round(st.elapsed, 3)})

    def _draw_stage(self, st: Stage) -> None:
        if self.mode != "normal":
            return
        count = f" {st.done}/{st.total}" if st.total else ""
        if self._tty:
            print(f"\r\033[K  {st.name}{count} ... {format_seconds(st.elapsed)}",
                  file=self.err, end="", flush=True)
        elif st.done == 0:
            print(f"  {st.name} ...", file=self.err, flush=True)

    def round(self, record: Mapping[str, Any], total_rounds: int, elapsed: float,
              eta: float | None) -> None:
        """One line per round: round, AUC, loss, elapsed, ETA."""
        if self.mode == "json":
            self._emit_json("round", {**record, "total_rounds": total_rounds,
                                      "elapsed_s": round(elapsed, 3),
                                      "eta_s": None if eta is None else round(eta, 3)})
            return
        if self.mode != "normal":
            return
        width = len(str(total_rounds))
        extra = ""
        if record.get("auc_per_participant") is not None:
            extra = f" (mean of {len(record['auc_per_participant'])} local models)"
        plq = record.get("label_quality") or {}
        seg = plq.get("segments") if isinstance(plq, Mapping) else None
        iou = f"  label IoU {_fmt(seg.get('iou'), '.3f')}" if seg else ""
        print(
            f"round {record['round']:>{width}}/{total_rounds}  AUC {_fmt(record.get('auc'))}{extra}"
            f"  AP {_fmt(record.get('ap_sklearn'))}  loss {_fmt(record.get('train_loss'))}{iou}"
            f"  elapsed {format_seconds(elapsed)}  ETA {format_seconds(eta)}",
            file=self.out, flush=True,
        )

    def final(self, summary: Mapping[str, Any], line: str) -> None:
        """The final result: ``line`` in normal/quiet mode, the summary in JSON mode."""
        if self.mode == "json":
            self._emit_json("summary", summary)
        else:
            print(line, file=self.out, flush=True)


class RoundClock:
    """Elapsed time and ETA over the rounds run in this session.

    Args:
      first_round: the first round this session runs (1 unless resuming).
      total_rounds: the last round.
    """

    def __init__(self, first_round: int, total_rounds: int):
        self.first_round = first_round
        self.total_rounds = total_rounds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self, completed_round: int) -> float | None:
        done = completed_round - self.first_round + 1
        if done <= 0:
            return None
        return self.elapsed() / done * (self.total_rounds - completed_round)
