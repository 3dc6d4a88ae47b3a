"""Periodic jobs inside ``faceledger serve``: signed audit checkpoints and the retention
sweep (which also prunes audit events past their retention).

One background thread per server process, started and stopped by ``create_app``'s
lifespan. With several uvicorn workers only one process runs the jobs: the one holding a
non-blocking ``flock`` on ``<home>/jobs.lock``; the others try again every few seconds and
take over when it exits (the kernel drops the lock of a dead process). A job that fails is
logged and tried again at its next time: it never stops the server or the other jobs.

To add a job, add one line to :func:`scheduled_jobs`.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceledger import errors
from faceledger.config import Settings
from faceledger.services.container import Services

log = logging.getLogger("faceledger.jobs")
ACTOR = "scheduler"  # the audit log's actor for what the jobs do
LOCK_FILE = "jobs.lock"

JobFunction = Callable[[Services], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval_s: float  # 0 or less: off
    run: JobFunction


def service(module: str, function: str) -> JobFunction:
    """``module.function(svc)``, imported when the job first runs (keeps start-up light
    and lets a job line name a service without an import of its own)."""

    def call(svc: Services) -> dict[str, Any]:
        fn: JobFunction = getattr(importlib.import_module(module), function)
        return fn(svc)

    return call


def scheduled_jobs(settings: Settings) -> list[Job]:
    """Every periodic job of the server, with its interval from the settings; those at 0
    are off. One line per job."""
    jobs = [
        Job("audit.checkpoint", settings.audit_checkpoint_minutes * 60,
            service("faceledger.services.auditing", "scheduled_checkpoint")),
        Job("retention.sweep", settings.retention_sweep_minutes * 60,
            service("faceledger.services.retention", "sweep")),
    ]
    return [job for job in jobs if job.interval_s > 0]


class JobRunner:
    """Runs ``jobs`` on their intervals in one daemon thread, while this process holds
    the jobs lock. The first run of each is one interval after start."""

    def __init__(self, svc: Services, jobs: list[Job], lock_path: Path, *,
                 tick_s: float = 1.0, retry_lock_s: float = 5.0) -> None:
        self.svc = svc.for_call(ACTOR)
        self.jobs = jobs
        self.lock_path = lock_path
        self.tick_s = tick_s
        self.retry_lock_s = retry_lock_s
        self.runs: dict[str, int] = {job.name: 0 for job in jobs}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None

    def start(self) -> None:
        if not self.jobs or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="faceledger-jobs",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._release()

    def _holds_lock(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another server process runs the jobs
            os.close(fd)
            return False
        self._fd = fd
        log.info("this process (pid %d) runs the periodic jobs: %s", os.getpid(),
                 ", ".join(f"{j.name} every {j.interval_s:g} s" for j in self.jobs))
        return True

    def _release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _loop(self) -> None:
        start = time.monotonic()
        due = {job.name: start + job.interval_s for job in self.jobs}
        next_lock_try = start
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            if self._fd is None:
                if now < next_lock_try:
                    continue
                try:
                    if not self._holds_lock():
                        next_lock_try = now + self.retry_lock_s
                        continue
                except OSError as exc:
                    log.error("cannot open the jobs lock %s: %s", self.lock_path, exc)
                    next_lock_try = now + self.retry_lock_s
                    continue
            for job in self.jobs:
                if self._stop.is_set() or time.monotonic() < due[job.name]:
                    continue
                self.run_once(job)
                due[job.name] = time.monotonic() + job.interval_s

    def run_once(self, job: Job) -> dict[str, Any] | None:
        """Run ``job`` now; its failure is logged, never raised."""
        try:
            result = job.run(self.svc)
        except errors.FaceledgerError as exc:
            log.error("job %s failed: %s: %s", job.name, exc.code, exc.message)
            return None
        except Exception:
            log.exception("job %s failed unexpectedly", job.name)
            return None
        self.runs[job.name] += 1
        log.info("job %s: %s", job.name, result)
        return result


def start_jobs(svc: Services) -> JobRunner:
    """The server's job runner, started (nothing runs on a read-only store)."""
    jobs = [] if svc.read_only else scheduled_jobs(svc.settings)
    runner = JobRunner(svc, jobs, svc.home / LOCK_FILE)
    runner.start()
    return runner
