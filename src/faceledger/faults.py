"""Named crash points for the fault-injection tests (tests/test_faults.py).

``crash_point(name)`` raises a Python audit event (PEP 578) and does nothing else: the
product never reads a setting, an environment variable or a global to decide to crash.
A test starts the real CLI in a fresh process through a small launcher that installs an
audit hook (``sys.addaudithook``) which kills the process with SIGKILL at the chosen
point, then restarts and checks that records, index and audit chain agree. An audit hook
can only be installed by code already running in the process, so nothing outside it can
arm a crash point.
"""

from __future__ import annotations

import sys

EVENT = "faceledger.crash_point"


def crash_point(name: str) -> None:
    sys.audit(EVENT, name)
