"""Memory of a large enrolment (issue 11, part 3): RSS of the `faceledger enroll` process
tree while it ingests a folder of --files files, sampled from /proc.

Run by hand (it takes a while: the real faces go through the whole pipeline):

    .venv/bin/python benchmarks/bench_ingest_memory.py --files 100000 --faces 2000

The folder is ``<subject>/<file>`` with ``--faces`` real LFW images (distinct images, one
subject each: they are decoded, detected, embedded and recorded) and, to make up
``--files``, distinct small files that are not images (random bytes named ``.jpg``: each is
read, hashed, sent to a worker and refused there as undecodable, and reported). So every
file costs the batch its bookkeeping (the file list, the per-file report, the hashes kept
to recognise copies), which is what grows with the number of files; the real faces show
that the pipeline's memory does not grow with the number of faces. The command runs in a
fresh process as a user runs it, with ``FACELEDGER_WORKERS`` (default 2) workers; the RSS
of the command and of each of its workers is read every 0.2 s from /proc.

Prints a summary and writes JSON to benchmarks/results/ingest-memory-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.served import FL, cli_env, new_bench_store, status_kib  # noqa: E402

JUNK_PER_SUBJECT = 20


def _data() -> Path:
    return Path(os.environ.get("FACELEDGER_TEST_DATA", REPO.parent / "shared" / "data"))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


class Sampler(threading.Thread):
    """Peak RSS of a process and of its children (and their sum), every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_main = self.peak_worker = self.peak_total = 0
        self.samples: list[tuple[float, int, int]] = []  # (s, main KiB, total KiB)
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            main = status_kib(self.pid, "VmRSS")
            workers = [status_kib(c, "VmRSS") for c in _children(self.pid)]
            total = main + sum(workers)
            self.peak_main = max(self.peak_main, main)
            self.peak_worker = max([self.peak_worker, *workers])
            self.peak_total = max(self.peak_total, total)
            self.samples.append((round(time.monotonic() - start, 1), main, total))
            self.stop.wait(self.every)


def build_folder(root: Path, files: int, faces: int, lfw: Path) -> tuple[int, int]:
    images = sorted(lfw.glob("*/*.jpg"))[:faces]
    for n, image in enumerate(images):
        folder = root / f"face-{n:06d}"
        folder.mkdir(parents=True)
        (folder / image.name).symlink_to(image.resolve())
    junk = files - len(images)
    for n in range(junk):
        folder = root / f"junk-{n // JUNK_PER_SUBJECT:06d}"
        if n % JUNK_PER_SUBJECT == 0:
            folder.mkdir(parents=True)
        (folder / f"{n:07d}.jpg").write_bytes(os.urandom(64))
    return len(images), junk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--faces", type=int, default=2_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        faces, junk = build_folder(root / "in", args.files, args.faces, _data() / "lfw")
        env = cli_env(root / "home", FACELEDGER_WORKERS=str(args.workers))
        new_bench_store(root / "home")
        print(f"folder of {faces + junk} files built in {time.perf_counter() - t0:.0f} s",
              flush=True)
        out_path = root / "report.json"
        start = time.perf_counter()
        with out_path.open("w") as out:
            proc = subprocess.Popen([str(FL), "enroll", "bench", str(root / "in"),
                                     "--json"], env=env, stdout=out,
                                    stderr=subprocess.PIPE, text=True)
            sampler = Sampler(proc.pid)
            sampler.start()
            _, stderr = proc.communicate()
            sampler.stop.set()
            sampler.join()
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"enroll failed ({proc.returncode}): {stderr[-2000:]}")
        counts = json.loads(out_path.read_text())["counts"]
        mib = 1 / 1024
        result = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "platform": platform.platform()},
            "command": " ".join(sys.argv),
            "files": faces + junk, "faces": faces, "not_images": junk,
            "workers": args.workers, "seconds": round(elapsed, 1),
            "files_per_second": round((faces + junk) / elapsed, 1), "counts": counts,
            "peak_rss_mib": {"total": round(sampler.peak_total * mib),
                             "main": round(sampler.peak_main * mib),
                             "one_worker": round(sampler.peak_worker * mib)},
            "rss_mib_over_time": [(s, round(m * mib), round(t * mib))
                                  for s, m, t in sampler.samples[::max(1, len(
                                      sampler.samples) // 40)]],
        }
    print(json.dumps(result, indent=2))
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"ingest-memory-{result['when'][:19].replace(':', '')}.json").write_text(
        json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
