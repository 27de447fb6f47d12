"""Wall time and peak resident memory of one stretch of work in this process.

On Linux the kernel's high-water mark of the process (``VmHWM``) is reset when the stretch starts
(``/proc/self/clear_refs``), so each stretch reports its own peak; elsewhere the figure is the
process's peak so far, and says so.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start the high-water mark again from the current resident size; False where it cannot be."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    """The process's peak resident memory since the last reset (or since it started), in MiB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@dataclass
class Measured:
    seconds: float
    peak_mib: float
    peak_is_own: bool  # False: the process's peak so far, which may come from an earlier stretch

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "peak_mib": round(self.peak_mib),
                **({} if self.peak_is_own else {"peak_since": "process start"})}


class Meter:
    """``with Meter() as m: ...`` then ``m.result``."""

    def __enter__(self) -> "Meter":
        self._own = reset_peak()
        self._t0 = time.perf_counter()
        self.result: Measured | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = Measured(time.perf_counter() - self._t0, peak_mib(), self._own)
