"""Failpoints for the crash-safety tests: ``PATRON_CRASH_AT=<name>`` makes the process kill itself
(SIGKILL, no cleanup, as a power cut or an OOM kill would) when it reaches the point of that name.

The points sit where a crash hurts most: between two committed files of an ingest, between the two
feature views of a materialisation, and between a model version's registration and its aliases.
Without the variable they cost one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("PATRON_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
