"""C-simulation of an HLS export without vendor tools: compile ``firmware/`` + ``tb/`` with g++
(``#pragma HLS`` ignored, plain ``<cstdint>`` integers) and run the testbench, which compares
every token and logit with the Python integer reference's golden data."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CXXFLAGS = ("-std=c++14", "-O2", "-Wall", "-Wextra", "-Wno-unknown-pragmas")
SOURCES = ("firmware/mmf_kernel.cpp", "tb/tb_mmf.cpp")
INCLUDES = ("firmware", "weights", "tb")
EXE = "build/mmf_csim"
_RESULT = re.compile(r"MMF_CSIM result=(PASS|FAIL) steps=(\d+) tokens_ok=(\d+)/(\d+) logits_ok=(\d+)/(\d+)"
                     r"(?: reset_mismatches=(\d+))?")


class CsimError(RuntimeError):
    """The C-simulation could not run (no compiler, not an export folder, compile error)."""


@dataclass
class CsimResult:
    """Outcome of one C-simulation run."""

    passed: bool
    steps: int
    tokens_ok: int
    logits_ok: int
    logits_total: int
    reset_mismatches: int
    warnings: int  # compiler warnings (0 expected)
    compiler: str
    compile_seconds: float
    run_seconds: float
    command: str
    output: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return cxx
    return out.splitlines()[0].strip() if out else cxx


def compile_command(out: Path, cxx: str) -> list[str]:
    return [cxx, *CXXFLAGS, *(f"-I{out / d}" for d in INCLUDES), *(str(out / s) for s in SOURCES), "-o", str(out / EXE)]


def run_csim(out: str | Path, cxx: str = "g++", max_steps: int | None = None, timeout_s: float = 600) -> CsimResult:
    """Compile and run the testbench of the export folder ``out``.

    Raises:
        CsimError: missing compiler or files, compile failure, or unparsable testbench output.
    """
    out = Path(out)
    missing = [s for s in (*SOURCES, "weights/mmf_weights.bin", "weights/mmf_weights.h", "tb/tb_data.h",
                           "firmware/mmf_params.h") if not (out / s).is_file()]
    if missing:
        raise CsimError(f"{out}: not a complete vitis export folder, missing {', '.join(missing)}")
    path = shutil.which(cxx)
    if path is None:
        raise CsimError(f"C++ compiler {cxx!r} not found on PATH (install g++ or pass --cxx)")
    (out / "build").mkdir(exist_ok=True)
    cmd = compile_command(out, cxx)
    t0 = time.perf_counter()
    comp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    t_compile = time.perf_counter() - t0
    log = comp.stdout + comp.stderr
    (out / "build" / "csim_compile.log").write_text(" ".join(cmd) + "\n" + log)
    if comp.returncode != 0:
        first = next((ln for ln in log.splitlines() if "error" in ln), log.strip()[:200])
        raise CsimError(f"{cxx} failed (exit {comp.returncode}): {first.strip()} "
                        f"(full log: {out / 'build' / 'csim_compile.log'})")
    warnings = sum(1 for ln in log.splitlines() if "warning:" in ln)
    run_cmd = [str(out / EXE), str(out / "weights" / "mmf_weights.bin")]
    if max_steps:
        run_cmd.append(str(int(max_steps)))
    t0 = time.perf_counter()
    run = subprocess.run(run_cmd, capture_output=True, text=True, timeout=timeout_s)
    t_run = time.perf_counter() - t0
    text = run.stdout + run.stderr
    (out / "build" / "csim_run.log").write_text(text)
    m = _RESULT.search(text)
    if m is None:
        raise CsimError(f"testbench exited {run.returncode} without a result line: {text.strip()[-300:]!r}")
    passed = m.group(1) == "PASS" and run.returncode == 0
    return CsimResult(passed=passed, steps=int(m.group(2)), tokens_ok=int(m.group(3)), logits_ok=int(m.group(5)),
                      logits_total=int(m.group(6)), reset_mismatches=int(m.group(7) or 0), warnings=warnings,
                      compiler=_compiler_version(cxx), compile_seconds=round(t_compile, 2),
                      run_seconds=round(t_run, 3), command=" ".join(cmd), output=text)


__all__ = ["CXXFLAGS", "CsimError", "CsimResult", "compile_command", "run_csim"]
