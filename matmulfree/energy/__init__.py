"""Energy and speed per generated token: measured (NVML, RAPL, timers) and modelled (FPGA build
model, operation counts priced with Horowitz's 45 nm energies), reported side by side and never
mixed. ``matmulfree power`` (matmulfree/commands/power.py) drives it.

Modules, one job each:

* :mod:`.meters`, :mod:`.nvml`, :mod:`.rapl` — thin energy-counter backends that report
  "unavailable: reason" instead of raising;
* :mod:`.targets` — timed decoding on CPU/GPU (the engines of :mod:`matmulfree.inference`) and the
  FPGA/HLS/operation-model rows;
* :mod:`.fpga` — tokens/s and modelled power from an RTL build's ``summary.json``;
* :mod:`.ops` — the hardware-independent operation model;
* :mod:`.report` — terminal table, JSON and PNG.
"""

from .ops import HOROWITZ_45NM_PJ, count_ops, price
from .report import Report, Row, Skip

__all__ = ["HOROWITZ_45NM_PJ", "Report", "Row", "Skip", "count_ops", "price"]
