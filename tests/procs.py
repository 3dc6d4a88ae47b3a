"""Running the real `faceledger` command in fresh processes, as a user does, and killing it
at named crash points (see faceledger.faults) for the fault-injection tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FACELEDGER = Path(sys.executable).with_name("faceledger")

# Runs the CLI in this interpreter after installing an audit hook that acts at the N-th
# time a named crash point is reached: "kill" sends SIGKILL to itself (after writing the
# pids of its worker processes to $FL_CHILDREN_FILE, if set); "run" runs a command (a JSON
# list) to completion, then carries on. With $FL_MAXRSS_FILE set, writes its own peak RSS
# (VmHWM, KiB) there at exit.
LAUNCHER = r"""
import atexit, json, multiprocessing, os, signal, subprocess, sys
point, count, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
del sys.argv[1:4]
seen = [0]
def hook(event, args):
    if event != "faceledger.crash_point" or args[0] != point:
        return
    seen[0] += 1
    if seen[0] != count:
        return
    if action == "kill":
        out = os.environ.get("FL_CHILDREN_FILE")
        if out:
            with open(out, "w") as fh:
                json.dump([p.pid for p in multiprocessing.active_children()], fh)
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        subprocess.run(json.loads(action[len("run:"):]), check=True, capture_output=True)
if point != "-":
    sys.addaudithook(hook)
rss = os.environ.get("FL_MAXRSS_FILE")
def peak_kib():
    # VmHWM: this process's own high-water mark. (ru_maxrss would carry the forking
    # parent's: a test process bigger than the child would read its own size.)
    with open("/proc/self/status") as fh:
        return next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
if rss:
    atexit.register(lambda: open(rss, "w").write(peak_kib()))
sys.argv[0] = "faceledger"
from faceledger.cli import main
main()
"""


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACELEDGER_")}
    env.update({"FACELEDGER_HOME": str(home), "FACELEDGER_USER": "tester",
                "FACELEDGER_WORKERS": "1"})
    env.update(extra)
    return env


def run(home: Path, *args: str, timeout: float = 300, **env: str
        ) -> subprocess.CompletedProcess[str]:
    """`faceledger ARGS` in a fresh process on the store at ``home``."""
    return subprocess.run([str(FACELEDGER), *args], env=cli_env(home, **env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def start(home: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(FACELEDGER), *args], env=cli_env(home, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_at(home: Path, point: str, count: int, action: str, *args: str,
           timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """`faceledger ARGS`, acting at the ``count``-th ``point`` (action "kill", or
    "run:" + a JSON command list)."""
    return subprocess.run([sys.executable, "-c", LAUNCHER, point, str(count), action, *args],
                          env=cli_env(home, **env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def ok_json(home: Path, *args: str, **env: str) -> Any:
    """Run with --json, require exit 0, return the parsed output."""
    proc = run(home, *args, "--json", **env)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


SOURCE = ["source", "add", "custody", "--lawful-basis", "law-enforcement-statute",
          "--basis-ref", "PACE 1984 s.64A", "--jurisdiction", "GB", "--retention-days", "365",
          "--purpose", "investigation", "--supplier", "Records Unit"]


def new_store(home: Path) -> None:
    for args in (["init"], SOURCE):
        proc = run(home, *args)
        assert proc.returncode == 0, proc.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(home: Path, log_path: Path, **env: str) -> Iterator[str]:
    """A real `faceledger serve` on the store at ``home``, on a free loopback port, ready
    (``/readyz`` answers 200); yields its URL, stops it after. Its log goes to
    ``log_path``, which must hold no traceback when it stops."""
    with server(home, log_path, **env) as (url, _proc):
        yield url


@contextlib.contextmanager
def server(home: Path, log_path: Path, **env: str
           ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``serving``, yielding the server's process too (its pid: its memory, its signals)."""
    import httpx

    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(FACELEDGER), "serve", "--port", str(port)],
                                env=cli_env(home, **env), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not become ready: "
                                       f"{log_path.read_text()[-2000:]}")
                time.sleep(0.3)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert "Traceback" not in log_path.read_text()  # no unexpected error on any route
