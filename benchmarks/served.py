"""A real `faceledger serve` for the benchmarks that go through HTTP (load_api.py,
bench_search_photo.py): started on a free loopback port, waited for until ready, stopped
after; and a gallery of LFW identities enrolled through the API. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

FL = Path(sys.executable).with_name("faceledger")


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
