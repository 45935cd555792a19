"""A progress line with rate and ETA for long loops (training, sampling, evaluation)."""

from __future__ import annotations

import time


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours:d}:{minutes:02d}:{secs:02d}' if hours else f'{minutes:d}:{secs:02d}'


class Progress:
    """Tracks progress from ``start`` to ``total`` and renders ``step/total, rate, ETA``."""

    def __init__(self, total: int, start: int = 0, unit: str = 'steps'):
        self.total, self.unit = total, unit
        self._t0, self._n0 = time.perf_counter(), start
        self.done = start

    def update(self, done: int) -> None:
        self.done = done

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return (self.done - self._n0) / elapsed if elapsed > 0 else 0.0

    def line(self, extra: str = '') -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float('nan')
        eta_text = format_seconds(eta) if rate > 0 else '?'
        pct = 100.0 * self.done / max(self.total, 1)
        return f'{self.done}/{self.total} ({pct:.1f}%) {rate:.2f} {self.unit}/s ETA {eta_text}' + (
            f' | {extra}' if extra else ''
        )
