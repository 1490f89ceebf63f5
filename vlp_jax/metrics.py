"""Where a run reports: WORKDIR/metrics.jsonl, TensorBoard event files, one console line per log step."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

from vlp_jax.paths import as_path

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def _plain(value: Any) -> Any:
    try:
        return float(value) if not isinstance(value, (int, str)) else value
    except (TypeError, ValueError):
        return str(value)


class MetricsWriter:
    """Appends one JSON object per log/eval step; mirrors scalars to TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = as_path(workdir) / METRICS_FILE
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter  # writes TF event files without TensorFlow

            try:  # a bucket needs tensorboardX's own client for it; metrics.jsonl is written either way
                self._tensorboard = SummaryWriter(str(as_path(workdir) / TENSORBOARD_DIR))
            except Exception as error:  # noqa: BLE001 - any backend failure only costs the event files
                print(f'WARNING: no TensorBoard files in {workdir} ({type(error).__name__}: {error})', flush=True)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {'step': int(step), **{key: _plain(value) for key, value in values.items()}}
        with self.path.open('a') as handle:
            handle.write(json.dumps(record) + '\n')
        if self._tensorboard is None:
            return
        for key, value in record.items():
            if key != 'step' and isinstance(value, (int, float)) and math.isfinite(value):
                self._tensorboard.add_scalar(key, value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def truncate_after(workdir: str, step: int) -> None:
    """Drops records newer than `step` (left by a run killed after its last checkpoint), so a
    resumed run's metrics.jsonl reads as if it had never been interrupted."""
    path = as_path(workdir) / METRICS_FILE
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line)['step'] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            continue  # a line cut short by SIGKILL
    if len(kept) != len(lines):
        path.write_text(''.join(kept))


# Figures of the machine and the compiled program rather than of training: they differ between
# otherwise identical runs (wall clock; FLOPs differ between device layouts), so comparisons skip them.
SPEED_KEYS = (
    'train/examples_per_sec',
    'train/steps_per_sec',
    'train/data_wait_fraction',
    'train/mfu',
    'train/flops_per_example',
)


# The first steps compile the step (and may recompile it once, when the donated state comes back in another
# layout): the ETA's clock starts once they are done, so the first ETA is not inflated by compilation.
ETA_SKIPPED_STEPS = 2


class Throughput:
    """Examples/s, the share of time spent waiting for data, and the ETA, between log steps.

    The ETA is timed over this process's steps after its first ETA_SKIPPED_STEPS (from `start_step` on a
    resumed run), so neither compilation nor the steps before a resume count."""

    def __init__(self, batch_size: int, total_steps: int, start_step: int):
        self.batch_size = batch_size
        self.total_steps = total_steps
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._data_wait = 0.0
        self._steps_done = 0  # steps of this process's run so far
        self._eta_start: float | None = None  # when the ETA's clock started (after ETA_SKIPPED_STEPS steps)

    def add_data_wait(self, seconds: float) -> None:
        self._data_wait += seconds

    def step_done(self) -> None:
        self._window_steps += 1
        self._steps_done += 1
        if self._steps_done == ETA_SKIPPED_STEPS:
            self._eta_start = time.perf_counter()

    def pause(self) -> float:
        """Marks the start of time that is not training (eval, checkpoint); returns a token."""
        return time.perf_counter()

    def resume(self, token: float) -> None:
        skipped = time.perf_counter() - token
        self._window_start += skipped
        if self._eta_start is not None:
            self._eta_start += skipped

    def eta_seconds(self, step: int, now: float) -> float | None:
        """Seconds to total_steps at the rate of the steps since the compiled ones; None before there are any."""
        timed = self._steps_done - ETA_SKIPPED_STEPS
        if self._eta_start is None or timed <= 0:
            return None
        return (now - self._eta_start) / timed * (self.total_steps - step)

    def window(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        stats = {
            'train/examples_per_sec': self._window_steps * self.batch_size / elapsed,
            'train/steps_per_sec': self._window_steps / elapsed,
            'train/data_wait_fraction': min(1.0, self._data_wait / elapsed),
        }
        eta = self.eta_seconds(step, now)
        if eta is not None:
            stats['eta_seconds'] = eta
        self._window_start, self._window_steps, self._data_wait = now, 0, 0.0
        return stats


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


def console_line(step: int, total: int, values: Mapping[str, float]) -> str:
    """One log step on the console; the ETA reads '-' until steps after the compiled ones were timed."""
    width = len(str(total))
    eta = format_duration(values['eta_seconds']) if 'eta_seconds' in values else '-'
    temp = f'temp {values["train/temperature"]:.4f}  ' if 'train/temperature' in values else ''  # none: task objectives
    return (
        f'step {step:>{width}}/{total}  loss {values["train/loss"]:.4f}  '
        f'{temp}{values["train/examples_per_sec"]:.0f} ex/s  '
        f'data wait {100 * values["train/data_wait_fraction"]:.1f}%  ETA {eta}'
    )
