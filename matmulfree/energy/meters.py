"""The interface of the energy meters (kept thin; one module per backend).

A meter reads a cumulative energy counter: :meth:`Meter.read` returns joules since an arbitrary
origin. It never raises for a missing device, driver or permission: :meth:`Meter.unavailable`
returns a one-line reason instead (``None`` when the meter works). Everything a meter reports is
**measured**; modelled figures never pass through here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Meter(Protocol):
    """A cumulative energy counter (joules)."""

    #: Short name used in reports (``"nvml"``, ``"rapl"``).
    name: str
    #: What the counter covers (e.g. ``"GPU 0 board"``, ``"CPU package 0+1"``).
    scope: str

    def unavailable(self) -> str | None:
        """``None`` if the meter can be read here, else the reason (one line)."""

    def read(self) -> float:
        """Joules since an arbitrary origin (monotonic within one process)."""


@dataclass
class EnergyWindow:
    """Energy read around a window of work (all **measured**)."""

    seconds: float
    joules: float
    idle_watts: float | None
    meter: str
    scope: str

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else float("nan")

    def joules_above_idle(self) -> float | None:
        """Joules minus idle power times the window (``None`` without an idle reading)."""
        if self.idle_watts is None:
            return None
        return self.joules - self.idle_watts * self.seconds


def idle_watts(meter: Meter, seconds: float = 2.0) -> float:
    """Average power while this process sleeps for ``seconds`` (other load on the device counts)."""
    t0, e0 = time.perf_counter(), meter.read()
    time.sleep(seconds)
    t1, e1 = time.perf_counter(), meter.read()
    return (e1 - e0) / (t1 - t0)


__all__ = ["EnergyWindow", "Meter", "idle_watts"]
