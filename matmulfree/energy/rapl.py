"""CPU energy from RAPL through the Linux powercap interface.

Reads ``energy_uj`` of the top-level package domains ``/sys/class/powercap/intel-rapl:N`` (AMD Zen
CPUs appear there too) and sums them, handling counter wrap-around with ``max_energy_range_uj``.
Since 2020 most kernels make ``energy_uj`` readable by root only; then, and in VMs and containers
without powercap, :meth:`RAPLMeter.unavailable` returns the reason instead of raising.
"""

from __future__ import annotations

import re
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


class RAPLMeter:
    """Sum of the package energy counters (joules)."""

    name = "rapl"

    def __init__(self, root: str | Path = POWERCAP) -> None:
        self.root = Path(root)
        self.scope = "CPU packages (RAPL)"
        self._domains: list[tuple[Path, float]] | None = None
        self._reason: str | None = None
        self._last: list[int] = []
        self._wraps: list[int] = []

    def _open(self) -> None:
        self._domains = []
        if not self.root.is_dir():
            self._reason = f"{self.root} does not exist (no powercap/RAPL in this kernel, VM or container)"
            return
        dirs = sorted(p for p in self.root.iterdir() if re.fullmatch(r"intel-rapl:\d+", p.name))
        if not dirs:
            self._reason = f"no RAPL package domain under {self.root}"
            return
        names = []
        for d in dirs:
            try:
                (d / "energy_uj").read_text()
                rng = float((d / "max_energy_range_uj").read_text())
            except PermissionError:
                self._reason = f"{d / 'energy_uj'} is not readable (root only on this kernel)"
                self._domains = []
                return
            except OSError as e:
                self._reason = f"{d / 'energy_uj'}: {e.strerror or e}"
                self._domains = []
                return
            self._domains.append((d / "energy_uj", rng))
            try:
                names.append((d / "name").read_text().strip())
            except OSError:
                names.append(d.name)
        self.scope = f"CPU {' + '.join(names)} (RAPL)"
        self._last = [int(p.read_text()) for p, _ in self._domains]
        self._wraps = [0] * len(self._domains)

    def unavailable(self) -> str | None:
        """``None`` if the counter can be read here, else the reason (one line)."""
        if self._domains is None:
            self._open()
        return self._reason

    def read(self) -> float:
        if self.unavailable():
            raise RuntimeError(self._reason)
        total = 0.0
        for i, (path, rng) in enumerate(self._domains):
            v = int(path.read_text())
            if v < self._last[i]:
                self._wraps[i] += 1
            self._last[i] = v
            total += v + self._wraps[i] * rng
        return total / 1e6


__all__ = ["POWERCAP", "RAPLMeter"]
