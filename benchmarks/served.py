"""What the benchmarks that run the real command share (load_api.py, bench_search_photo.py,
bench_ingest_memory.py): the CLI on a store, a fresh store with a benchmark source, a real
`faceledger serve` (started on a free loopback port, waited for until ready, stopped
after), a gallery of LFW identities enrolled through the API, and a process's memory from
/proc. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

FL = Path(sys.executable).with_name("faceledger")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any FACELEDGER_ setting, on the store at ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACELEDGER_")}
    env.update(FACELEDGER_HOME=str(home), FACELEDGER_USER="bench", **extra)
    return env


def cli(home: Path, *args: str) -> dict[str, object]:
    """`faceledger ARGS --json` on the store at ``home``; its parsed output."""
    out = subprocess.run([str(FL), *args, "--json"], env=cli_env(home), capture_output=True,
                         text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def new_bench_store(home: Path) -> None:
    """A fresh store with one source, ``bench``, for the purpose ``investigation``."""
    cli(home, "init")
    cli(home, "source", "add", "bench", "--lawful-basis", "consent", "--basis-ref", "B",
        "--jurisdiction", "GB", "--retention-days", "30", "--purpose", "investigation",
        "--supplier", "benchmark")


def status_kib(pid: int, field: str) -> int:
    """A /proc/PID/status field in KiB (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path, workers: int = 1
            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yields (URL, server process); ``env`` must name the store (FACELEDGER_HOME)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        server = subprocess.Popen([str(FL), "serve", "--port", str(port), "--workers",
                                   str(workers)], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("server did not become ready")
                time.sleep(0.5)
            yield url, server
        finally:
            server.terminate()
            server.wait(timeout=30)


def enrol_gallery(url: str, steward_key: str, lfw: Path, names: list[str],
                  source: str = "bench") -> None:
    """Each name's first LFW photo, enrolled through the API 20 to a request."""
    headers = {"Authorization": f"Bearer {steward_key}"}
    for start in range(0, len(names), 20):
        chunk = names[start:start + 20]
        files = [("image", (f"{n}.jpg", (lfw / n / f"{n}_0001.jpg").read_bytes()))
                 for n in chunk]
        httpx.post(f"{url}/v1/sources/{source}/images", files=files,
                   data={"subject_ref": chunk}, headers=headers, timeout=300
                   ).raise_for_status()
