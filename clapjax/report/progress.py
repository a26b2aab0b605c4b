"""Terminal progress: one line per round, live stage and round indicators, quiet/JSON modes.

Modes:
  * ``"normal"``: info and per-round lines on stdout; stage indicators,
    warnings and the live progress of a running round on stderr. On a
    terminal the live parts are ``rich`` progress displays (transient: they
    vanish when the stage or round ends, leaving one plain line); when stderr
    is not a terminal (a log file, a pipe) they are plain lines without any
    escape codes: one when a stage starts and one when it ends.
  * ``"quiet"``: only the final result line on stdout (errors still go to stderr);
  * ``"json"``: JSON lines only, on stdout (``{"event": "round", ...}``,
    ``{"event": "stage", ...}``, ``{"event": "info"|"warning", ...}``,
    ``{"event": "summary", ...}``).

Elapsed times come from a :class:`RunClock`, which adds the working time of
the run's earlier sessions (kept in ``metrics.jsonl``) to this session's, so
elapsed time counts data loading and pseudo-labelling and continues across
resumes.
"""

from __future__ import annotations

import contextlib
import json
import statistics as _stats
import sys
import time
from typing import Any, Iterator, Literal, Mapping, Sequence, TextIO

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
        self._task = None

    def update(self, done: int | None = None, advance: int = 1) -> None:
        """Sets (or advances) the completed count and redraws at most 10x/s."""
        self.done = self.done + advance if done is None else done
        now = time.perf_counter()
        if now - self._last_draw >= 0.1 or (self.total and self.done >= self.total):
            self._last_draw = now
            self.reporter._draw_stage(self)

    def describe(self, text: str) -> None:
        """Changes what the live indicator says (e.g. the current phase)."""
        self.name = text
        self.reporter._draw_stage(self)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Reporter:
    """Prints run progress according to a mode.

    Args:
      mode: ``"normal"``, ``"quiet"`` or ``"json"``.
      out: stream for results (stdout).
      err: stream for stage indicators and warnings (stderr).
      clock: the run's clock (elapsed shown by live indicators); a new one by default.
      live: use ``rich`` live displays; default: when ``err`` is a terminal.
    """

    def __init__(self, mode: Mode = "normal", out: TextIO | None = None, err: TextIO | None = None,
                 clock: "RunClock | None" = None, live: bool | None = None):
        if mode not in ("normal", "quiet", "json"):
            raise ValueError(f"progress mode must be normal, quiet or json, got {mode!r}")
        self.mode = mode
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.clock = clock if clock is not None else RunClock()
        tty = bool(getattr(self.err, "isatty", lambda: False)())
        self._live_enabled = (tty if live is None else live) and mode == "normal"
        self._progress = None  # the active rich Progress, if any

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
        """A warning: stderr in every mode (JSON mode: a ``warning`` event instead)."""
        if self.mode == "json":
            self._emit_json("warning", {"message": message})
        elif self._progress is not None:
            self._progress.console.print(f"warning: {message}", markup=False, highlight=False)
        else:
            print(f"warning: {message}", file=self.err, flush=True)

    # ------------------------------------------------------------------ live parts

    def _start_live(self, st: Stage, show_total: bool) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn)

        # Only started for a terminal (or when asked to): draw as on one.
        console = Console(file=self.err, highlight=False, force_terminal=True)
        columns = [SpinnerColumn(), TextColumn("{task.description}", markup=False)]
        if show_total:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns += [TimeElapsedColumn(), TextColumn("{task.fields[run]}", markup=False)]
        self._progress = Progress(*columns, console=console, transient=True,
                                  redirect_stdout=False, redirect_stderr=False)
        self._progress.start()
        st._task = self._progress.add_task(st.name, total=st.total, run=self._run_elapsed())

    def _stop_live(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _run_elapsed(self) -> str:
        return f"run {format_seconds(self.clock.elapsed())}"

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Stage]:
        """Context manager around a long stage (statistics, generation, ...)."""
        st = Stage(self, name, total)
        if self.mode == "normal":
            if self._live_enabled and self._progress is None:
                self._start_live(st, show_total=bool(total))
            else:
                self._draw_stage(st)
        try:
            yield st
        finally:
            if st._task is not None:
                self._stop_live()
        if self.mode == "normal":
            count = f" {st.done}/{st.total}" if st.total else ""
            print(f"  {name}{count} done in {format_seconds(st.elapsed)}", file=self.err, flush=True)
        elif self.mode == "json":
            self._emit_json("stage", {"name": name, "seconds": round(st.elapsed, 3)})

    def _draw_stage(self, st: Stage) -> None:
        if self.mode != "normal":
            return
        if st._task is not None and self._progress is not None:
            self._progress.update(st._task, completed=st.done, description=st.name,
                                  run=self._run_elapsed())
        elif not self._live_enabled and st.done == 0 and st._task is None and not getattr(st, "_announced", False):
            st._announced = True
            print(f"  {st.name} ...", file=self.err, flush=True)

    @contextlib.contextmanager
    def round_progress(self, round_number: int, total_rounds: int,
                       expected_s: float | None = None) -> Iterator[Stage]:
        """Live indicator while a round runs (terminal only): the round, its current
        phase (``handle.describe("evaluating")``), time in the round and in the run,
        and the duration of a typical earlier round. Prints nothing when it ends:
        :meth:`round` prints the round's line."""
        label = f"round {round_number}/{total_rounds}"
        if expected_s:
            label += f" (a round takes ~{format_seconds(expected_s)})"
        st = Stage(self, label, None)
        st.prefix = label  # type: ignore[attr-defined]
        st._announced = True  # no plain line: the round's own line follows
        if self._live_enabled and self._progress is None:
            self._start_live(st, show_total=False)
        try:
            yield _RoundHandle(st)
        finally:
            if st._task is not None:
                self._stop_live()

    def round(self, record: Mapping[str, Any], total_rounds: int, elapsed: float,
              eta: float | None) -> None:
        """One line per round: round, AUC, loss, elapsed (since the run started), ETA."""
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

    def close(self) -> None:
        """Stops any live display (e.g. after an exception)."""
        self._stop_live()


class _RoundHandle:
    """What :meth:`Reporter.round_progress` yields."""

    def __init__(self, stage: Stage):
        self._stage = stage

    def phase(self, text: str) -> None:
        """Shows the round's current phase (``training``, ``evaluating``, ...)."""
        self._stage.describe(f"{self._stage.prefix}: {text}")  # type: ignore[attr-defined]


class RunClock:
    """Elapsed time of a run over all its sessions, and the ETA of its rounds.

    Args:
      prior_s: working time of the run's earlier sessions (up to the last
        round they completed; e.g. the ``elapsed_s`` of the last kept round).
      start: ``time.perf_counter()`` when this session started (default: now).
    """

    def __init__(self, prior_s: float = 0.0, start: float | None = None):
        self.prior_s = float(prior_s)
        self.start = time.perf_counter() if start is None else float(start)

    def elapsed(self) -> float:
        """Seconds: ``prior_s`` plus the time since this session started."""
        return self.prior_s + time.perf_counter() - self.start

    @staticmethod
    def typical_round(round_seconds: Sequence[float]) -> float | None:
        """Median duration of the last (up to 5) rounds; None before any round."""
        recent = [float(s) for s in round_seconds[-5:] if s is not None]
        return _stats.median(recent) if recent else None

    def eta(self, round_seconds: Sequence[float], remaining: int) -> float | None:
        """Seconds until the last round: remaining rounds times a typical round."""
        if remaining <= 0:
            return 0.0
        typical = self.typical_round(round_seconds)
        return None if typical is None else typical * remaining


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
