"""GPU energy from NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``).

The counter (millijoules since the driver loaded, Volta and newer) covers the whole board of one
GPU. It is read through ``nvidia-ml-py`` (module ``pynvml``); tools such as Zeus read the same
counter. Missing package, driver or GPU, or a GPU without the counter, make
:meth:`NVMLMeter.unavailable` return the reason instead of raising.
"""

from __future__ import annotations

from typing import Any


class NVMLMeter:
    """Energy counter of GPU ``index`` (joules)."""

    name = "nvml"

    def __init__(self, index: int = 0, nvml: Any = None) -> None:
        self.index = index
        self.scope = f"GPU {index} board (NVML total energy)"
        self._nvml = nvml
        self._handle = None
        self._reason: str | None = None
        self._checked = False

    def _open(self) -> None:
        self._checked = True
        try:
            if self._nvml is None:
                import pynvml as nvml  # nvidia-ml-py
            else:
                nvml = self._nvml
        except ImportError:
            self._reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            if self.index >= count:
                self._reason = f"NVML sees {count} GPU(s), no GPU {self.index}"
                return
            self._handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
            name = nvml.nvmlDeviceGetName(self._handle)
            self.scope = f"GPU {self.index} {name.decode() if isinstance(name, bytes) else name} board"
            nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._nvml = nvml
        except Exception as e:  # NVMLError_* (no driver, not supported, ...)
            self._reason = f"NVML unavailable: {str(e).strip() or type(e).__name__}"
            self._handle = None

    def unavailable(self) -> str | None:
        """``None`` if the counter can be read here, else the reason (one line)."""
        if not self._checked:
            self._open()
        return self._reason

    def read(self) -> float:
        if self.unavailable():
            raise RuntimeError(self._reason)
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0


__all__ = ["NVMLMeter"]
