"""Energy and speed per generated token: measured (NVML, RAPL, timers) and modelled (FPGA build
model, operation counts priced with Horowitz's 45 nm energies), reported side by side and never
mixed. ``matmulfree power`` (matmulfree/commands/power.py) drives it.

Modules, one job each:

* :mod:`.meters`, :mod:`.nvml`, :mod:`.rapl` — thin energy-counter backends that report
  "unavailable: reason" instead of raising;
* :mod:`.cpu_decode`, :mod:`.ternary_mm`, :mod:`.ckernel` — the fast CPU decode path for packed
  ternary weights (int8 activations, exact integer products) and its dense fp32 twin;
* :mod:`.targets` — timed decoding on CPU/GPU and the FPGA/HLS/operation-model rows;
* :mod:`.fpga` — tokens/s and modelled power from an RTL build's ``summary.json``;
* :mod:`.ops` — the hardware-independent operation model;
* :mod:`.report` — terminal table, JSON and PNG.
"""

from .cpu_decode import DenseCPUDecoder, PackedCPUDecoder
from .ops import HOROWITZ_45NM_PJ, count_ops, price
from .report import Report, Row, Skip

__all__ = ["HOROWITZ_45NM_PJ", "DenseCPUDecoder", "PackedCPUDecoder", "Report", "Row", "Skip", "count_ops", "price"]
