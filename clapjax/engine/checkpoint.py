"""Orbax checkpoints of the whole engine state, one per round.

``orbax.checkpoint.CheckpointManager`` writes each step to a temporary
directory and renames it when complete, so a killed run never leaves a
half-written "latest" checkpoint. Restoring needs the structure of the state
(an abstract pytree from a freshly initialised engine).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class RoundCheckpointer:
    """Saves/restores engine states keyed by the number of completed rounds.

    Args:
      directory: checkpoint directory (created if missing).
      max_to_keep: keep only the newest checkpoints (None keeps all).
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = None):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, rounds_done: int, state: Any) -> None:
        """Writes ``state`` as step ``rounds_done`` (atomic, synchronous).

        An existing checkpoint of that step (a run resumed from an earlier
        round) is replaced.
        """
        if rounds_done in self._manager.all_steps():
            self._manager.delete(rounds_done)
        self._manager.save(rounds_done, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def latest(self) -> int | None:
        """Newest complete step, or None."""
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, step: int, like: Any) -> Any:
        """Restores step ``step`` into the structure (and shardings) of ``like``."""
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest_readable(self, like: Any, max_step: int | None = None
                                ) -> tuple[int | None, Any, list[tuple[int, str]]]:
        """Restores the newest checkpoint that can be read, skipping unreadable ones.

        A checkpoint directory damaged after it was written (a disk error, a
        file deleted or truncated by hand) makes orbax raise; the previous
        round's checkpoint is then used instead, and the caller redoes the
        rounds after it.

        Args:
          like: a state of the right structure (e.g. a fresh ``Engine.init()``).
          max_step: ignore checkpoints after this step (default: all).

        Returns:
          ``(step, state, skipped)``: the restored step (None and ``like`` when
          no checkpoint is readable) and ``(step, reason)`` of each newer
          checkpoint that was skipped, newest first.
        """
        skipped: list[tuple[int, str]] = []
        steps = sorted((s for s in self.steps() if max_step is None or s <= max_step), reverse=True)
        for step in steps:
            try:
                return step, self.restore(step, like), skipped
            except Exception as err:  # orbax/tensorstore raise many types for damaged files
                reason = " ".join(f"{type(err).__name__}: {err}".split())
                skipped.append((step, reason[:300]))
        return None, like, skipped

    def close(self) -> None:
        self._manager.close()
