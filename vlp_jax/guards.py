"""What stops a run early without losing it: preemption signals and divergence.

- SIGTERM (a pre-empted TPU VM, a SLURM time limit or `--signal`) and SIGINT (Ctrl-C) no
  longer kill the run on the spot: the handler only raises a flag, the loop finishes the
  running step, checkpoints it and exits 0, and re-running the command resumes bit-exactly.
  With several processes the flag is agreed on every step (any process signalled stops all
  at the same step), since the checkpoint save is collective.
- A step whose loss or gradient is non-finite is skipped by the step itself (steps.py,
  decided before the update: the state keeps its old values). `NonFiniteGuard` counts the skips
  (`train/skipped_steps`) and stops the run after `nonfinite_patience` in a row, so a
  diverged run neither trains on NaNs nor writes them over its good checkpoints.
"""

from __future__ import annotations

import signal
from typing import Any

import numpy as np

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Diverged(Exception):
    """Too many non-finite steps in a row; the message says what to do."""


class StopSignals:
    """Turns SIGTERM/SIGINT into a flag the loop reads after each step (a context manager)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """True when any process received a stop signal (agreed across processes: a collective)."""
        import jax

        local = self.received is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(local))))


class NonFiniteGuard:
    """Counts skipped (non-finite) steps; raises Diverged after `patience` in a row."""

    def __init__(self, patience: int, skipped_before: int = 0):
        self.patience = patience
        self.total = skipped_before
        self.in_a_row = 0
        self._last_seen = -1

    def observe(self, step: int, skipped: int) -> None:
        """Step `step` (1-based: the step just done) was skipped or not; each step is counted once."""
        if step <= self._last_seen:
            return
        self._last_seen = step
        if skipped:
            self.total += 1
            self.in_a_row += 1
        else:
            self.in_a_row = 0
        if self.in_a_row >= self.patience:
            raise Diverged(
                f'{self.in_a_row} steps in a row up to step {step} had a non-finite loss, gradient or update and were '
                'skipped; the run stopped and its checkpoints hold only finite params. Lower lr (or raise '
                'nonfinite_patience) and re-run: it resumes from the last checkpoint.'
            )
