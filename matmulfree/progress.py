"""What a training run prints while it runs: a progress bar on a terminal, plain lines elsewhere.

On a terminal (``stream.isatty()``) and with ``log.progress: true`` a tqdm bar shows the step,
loss, learning rate and tokens per second. In a pipe, a file or a job log the bar would fill the
file with carriage returns, so instead one line is written every ``log.every`` steps (and at the
last step)::

    step 40/1200  loss 2.4671  lr 4.00e-03  tok/s 12,903  elapsed 0:00:13  ETA 0:06:16

Messages (evaluations, samples) go through :meth:`ProgressLog.write` in both modes, so they never
break the bar. ``log.csv``, TensorBoard and the loss plot are written by the trainer regardless.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for a non-negative number of seconds (``?`` when unknown)."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an interactive terminal (false for pipes, files and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressLog:
    """Progress of steps ``initial + 1 .. total``: a bar on a terminal, else a line every ``every`` steps.

    Args:
        total: the last step of the run.
        initial: steps already done (a resumed run starts past 0).
        every: steps between plain lines (``log.every``).
        enabled: false on non-main processes: nothing is printed at all.
        bar: allow the progress bar (``log.progress``); it still needs a terminal.
        stream: where everything goes (default ``sys.stderr``, like tqdm).
    """

    def __init__(self, total: int, initial: int, every: int, enabled: bool = True, bar: bool = True,
                 stream: TextIO | None = None) -> None:
        self.total, self.initial, self.every, self.enabled = total, initial, max(1, every), enabled
        self.stream = stream if stream is not None else sys.stderr
        self.use_bar = enabled and bar and is_terminal(self.stream)
        self.start = time.perf_counter()
        self._bar = None
        if self.use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=self.stream)

    def eta_s(self, step: int, now: float | None = None) -> float:
        """Seconds left at ``step``, from the mean time per step of this process so far."""
        done = step - self.initial
        if done <= 0:
            return float("nan")
        elapsed = (now if now is not None else time.perf_counter()) - self.start
        return elapsed / done * (self.total - step)

    def line(self, step: int, loss: float, lr: float, tokens_per_s: float, now: float | None = None) -> str:
        """The plain progress line for ``step`` (loss in nats/token, lr absolute, tokens/s of the window)."""
        now = now if now is not None else time.perf_counter()
        width = len(str(self.total))
        return (f"step {step:>{width}}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  tok/s {tokens_per_s:,.0f}  "
                f"elapsed {format_duration(now - self.start)}  ETA {format_duration(self.eta_s(step, now))}")

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float | None) -> None:
        """Report optimizer step ``step``; ``tokens_per_s`` is None on steps that are not log steps."""
        if not self.enabled:
            return
        if self._bar is not None:
            if tokens_per_s is not None:
                self._bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            self._bar.update(step - self._bar.n)
        elif tokens_per_s is not None and (step % self.every == 0 or step == self.total):
            self._print(self.line(step, loss, lr, tokens_per_s))

    def write(self, message: str) -> None:
        """Print a message (above the bar on a terminal, as plain lines elsewhere)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            self._print(message)

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
