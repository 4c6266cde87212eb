"""One metrics sink for a run: a no-op default, an in-memory one for tests, TensorBoard for people.

Only one `TensorBoardSink` writes to a run's `tb/` directory; threads share it through its lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol


class MetricsSink(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def text(self, tag: str, value: str) -> None: ...
    def hparams(self, params: dict[str, float | str | bool], metrics: list[str]) -> None: ...
    def close(self) -> None: ...


class NullSink:
    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def text(self, tag: str, value: str) -> None:
        pass

    def hparams(self, params: dict, metrics: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps every scalar as (tag, step, value); handy in tests and benchmarks."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, int, float]] = []
        self.texts: dict[str, str] = {}
        self._lock = threading.Lock()

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._lock:
            self.scalars.append((tag, step, float(value)))

    def text(self, tag: str, value: str) -> None:
        self.texts[tag] = value

    def hparams(self, params: dict, metrics: list[str]) -> None:
        self.texts["hparams"] = repr(params)

    def series(self, tag: str) -> list[tuple[int, float]]:
        return [(s, v) for t, s, v in self.scalars if t == tag]

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        """`purge_step`: a resumed run hides what an earlier writer logged from that step on."""
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: keep it lazy

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        self._lock = threading.Lock()

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._lock:
            self._writer.add_scalar(tag, float(value), step)

    def text(self, tag: str, value: str) -> None:
        with self._lock:
            self._writer.add_text(tag, value)

    def hparams(self, params: dict, metrics: list[str]) -> None:
        """The run's hyperparameters in TensorBoard's HPARAMS tab, in this run's own event file
        (SummaryWriter.add_hparams would open a second run directory)."""
        from torch.utils.tensorboard.summary import hparams

        exp, start, end = hparams(params, dict.fromkeys(metrics, 0.0))
        with self._lock:
            fw = self._writer.file_writer
            for summary in (exp, start, end):
                fw.add_summary(summary)

    def close(self) -> None:
        with self._lock:
            self._writer.flush()
            self._writer.close()
