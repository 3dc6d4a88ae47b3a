"""ONNX Runtime, imported with its telemetry off.

faceledger runs dlib's ResNet on ONNX Runtime (``vision/dlib_graph.py``). The pinned
1.28.0 has no telemetry compiled in on Linux. From 1.29.0 the official wheels carry
Microsoft's 1DS telemetry on POSIX too (microsoft/onnxruntime#27379: a process event and
session, model and error events uploaded over HTTPS, a persistent device id, an offline
cache), on by default; checked here in the wheels' libraries (the 1DS SDK's symbols are in
1.29.0-1.32.0, not in 1.24.4-1.28.0), and with 1.32.0 ``import onnxruntime`` wrote a
session file ``$TMPDIR/.ses``. A face-search system must send nothing anywhere and leave no trace
of a search, so ``ORT_DISABLE_TELEMETRY=1`` (the documented full opt-out, read once when the
library first loads) is set before every import made through here: an upgrade of the pin
cannot turn it on. ``tests/test_dlib_graph.py`` checks, in a fresh process, that building
and running the network leaves no file in ``$TMPDIR`` or ``$HOME``.
"""

from __future__ import annotations

import os
from typing import Any

TELEMETRY_OFF = ("ORT_DISABLE_TELEMETRY", "1")


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, its telemetry switched off first."""
    name, value = TELEMETRY_OFF
    os.environ[name] = value  # before the library's first load in this process
    import onnxruntime as ort

    return ort
