"""`imsm experiment FILE --workers N`: N worker processes of one command share a grid.

Each worker is `imsm experiment FILE` started as a child with the same options, so the cells are
shared through the claims every run takes (`imsm.experiment.claim`): each cell runs once, a killed
run resumes and a second run skips what is finished. The parent streams the workers' lines with
a `[wI]` prefix, keeps one log per worker in `WORK/.workers/`, forwards Ctrl-C and SIGTERM to
them, and fails if any of them failed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

LOGS = ".workers"


def child_arguments(options: Any) -> list[str]:
    """The `imsm experiment` command line of one worker: the parent's options without `--workers`."""
    arguments = [sys.executable, "-m", "imsm", "experiment", str(options.file)]
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name in ("file", "workers") or value is None or value is False:
            continue
        arguments.append("--" + f.name.replace("_", "-"))
        if value is not True:
            arguments.append(str(value))
    return arguments


def threads_per_worker(workers: int) -> int:
    """CPU threads each worker may use: the cores shared out, at least one (one per worker when
    there are as many workers as cores, the fastest way to run many small cells on a CPU)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def child_environment(workers: int) -> dict[str, str]:
    """The parent's environment, with each worker's share of the cores (unless the user set one)."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    threads = str(threads_per_worker(workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # torch takes its thread count from these
        environment.setdefault(name, threads)
    return environment


def _copy_lines(stream: TextIO, log: TextIO, prefix: str) -> None:
    """Every line of a worker into its log as written, and to the console with its prefix; of a
    progress bar's redrawn line (carriage returns) the console gets the last state only."""
    for line in stream:
        log.write(line)
        log.flush()
        shown = line.rstrip("\n").rsplit("\r", 1)[-1]
        if shown.strip():
            print(f"{prefix} {shown}", flush=True)


class _Forwarder:
    """While installed, SIGINT and SIGTERM go to the workers (each in a process group of its own,
    so a terminal's Ctrl-C reaches them once, through here); a second signal kills them."""

    def __init__(self, children: list[subprocess.Popen]) -> None:
        self.children = children
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Forwarder:
        for number in (signal.SIGINT, signal.SIGTERM):
            self.previous[number] = signal.signal(number, self._forward)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _forward(self, number: int, frame) -> None:
        again = self.received is not None
        self.received = number
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL if again else number)


def run_workers(options: Any, work: Path, log=print) -> int:
    """Start `options.workers` workers on the experiment, wait for all of them; the exit code is 0
    when every worker succeeded, 128 + the signal when stopped, else 1 (naming the logs to read)."""
    logs = work / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    arguments, environment = child_arguments(options), child_environment(options.workers)
    threads = environment["OMP_NUM_THREADS"]
    log(f"{options.workers} workers, CPU threads each: {threads}; their logs: {logs}/worker-N.log")
    children: list[subprocess.Popen] = []
    copiers: list[threading.Thread] = []
    files: list[TextIO] = []
    with _Forwarder(children) as forwarder:
        for index in range(1, options.workers + 1):
            file = (logs / f"worker-{index}.log").open("a", encoding="utf-8")
            file.write(f"--- worker {index} started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(arguments)}\n")
            files.append(file)
            child = subprocess.Popen(
                arguments,
                env=environment,
                stdin=subprocess.DEVNULL,  # a process group apart from the terminal's must not read it
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                process_group=0,  # out of the terminal's group: its Ctrl-C reaches them once, through here
            )
            children.append(child)
            copier = threading.Thread(target=_copy_lines, args=(child.stdout, file, f"[w{index}]"), daemon=True)
            copier.start()
            copiers.append(copier)
        codes = [child.wait() for child in children]
        for copier in copiers:
            copier.join()
    for file in files:
        file.close()
    if forwarder.received is not None:
        log(f"stopped by signal {forwarder.received}; run the same command again to resume")
        return 128 + forwarder.received
    failed = [f"worker {i} (exit {code}, {logs / f'worker-{i}.log'})" for i, code in enumerate(codes, 1) if code]
    if failed:
        log(f"{len(failed)} of {len(codes)} workers failed: {'; '.join(failed)}")
        return 1
    return 0
