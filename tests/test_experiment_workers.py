"""`imsm experiment FILE --workers N`: worker processes of one command share a grid, each cell once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import save_tiny_model
from imsm.cli import main
from imsm.experiment import runner
from imsm.experiment.cli import ExperimentOptions
from imsm.experiment.spec import load_experiment
from imsm.experiment.workers import child_arguments, child_environment


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    save_tiny_model(root / "model")
    rows = [{"q": f"w{3 + i} w{10 + i} w{20 + i}", "a": f"w{30 + i % 3}"} for i in range(8)]
    (root / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n"
    (root / "probe.yaml").write_text(spec)
    return root


def write_config(workspace: Path, tmp_path: Path, seeds: int = 2) -> str:
    probe = str(workspace / "probe.yaml")
    config = {
        "name": "tiny-workers",
        "results": str(tmp_path / "results"),
        "work": str(tmp_path / "work"),
        "model": str(workspace / "model"),
        "train": {"epochs": 1, "batch_size": 4, "micro_batch_size": 2, "learning_rate": 0.01, "dtype": "fp32"},
        "eval": {"limit": 4, "batch_size": 4, "max_new_tokens": 3},
        "original": [probe],
        "grids": {"main": {"task": [probe], "peft": "lora", "fusion": ["none", "imsm"], "seed": list(range(seeds))}},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


def start(path: str, workers: int = 2) -> subprocess.Popen:
    command = [sys.executable, "-m", "imsm", "experiment", path, "--workers", str(workers)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trainings(work: Path, run: int | None = None, what: tuple[str, ...] = (": training", ": resuming")) -> list[str]:
    """The cells the workers' logs say were trained (or resumed), one entry per time: in every run
    of the command, or in the given one (0 the first; each start of a worker begins its log's next part)."""
    cells = []
    for log in sorted((work / ".workers").glob("worker-*.log")):
        parts = log.read_text().split("--- worker ")[1:]
        for part in parts if run is None else parts[run : run + 1]:
            lines = [line.split(": ", 1)[1] for line in part.splitlines() if line.startswith("imsm experiment: ")]
            cells += [line.split(": ")[0] for line in lines if any(w in line for w in what)]
    return cells


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_worker_count_gets_one_line(workspace, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stopped:
        main(["experiment", write_config(workspace, tmp_path), "--workers", value])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "--workers" in error and "positive integer" in error


def test_each_worker_runs_the_same_command_on_its_share_of_the_cores(monkeypatch):
    options = ExperimentOptions(file=Path("study.yaml"), grid="main", train_only=True, workers=3)
    arguments = child_arguments(options)
    assert arguments[1:] == ["-m", "imsm", "experiment", "study.yaml", "--grid", "main", "--gate-examples", "16",
                             "--train-only"]  # fmt: skip
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert child_environment(16)["OMP_NUM_THREADS"] == "1" and child_environment(4)["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
    assert child_environment(16)["OMP_NUM_THREADS"] == "2"


@pytest.mark.slow
def test_two_workers_run_each_cell_once_and_a_second_run_skips_all(workspace, tmp_path):
    path = write_config(workspace, tmp_path)
    experiment = load_experiment(path)
    process = start(path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert sorted(trainings(experiment.work)) == sorted(c.name for c in experiment.cells)  # each once
    assert sorted(trainings(experiment.work, what=(": evaluating on",))) == sorted(c.name for c in experiment.cells)
    assert all(runner.is_done(experiment, c) for c in experiment.cells)
    assert "[w1]" in output and "[w2]" in output
    written = {p: p.stat().st_mtime_ns for p in experiment.results.rglob("*") if p.is_file()}

    process = start(path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "4 done, 0 to run" in output
    assert sorted(trainings(experiment.work)) == sorted(c.name for c in experiment.cells)  # none again
    assert {p: p.stat().st_mtime_ns for p in experiment.results.rglob("*") if p.is_file()} == written


@pytest.mark.slow
def test_a_stopped_run_stops_its_workers_and_the_next_run_resumes(workspace, tmp_path):
    path = write_config(workspace, tmp_path, seeds=6)  # 12 cells: many still to run when the first is done
    experiment = load_experiment(path)
    process = start(path)
    deadline = time.monotonic() + 600
    while not any(runner.is_done(experiment, c) for c in experiment.cells) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "run the same command again to resume" in output
    # The workers are gone: none holds a claim any more.
    assert all(runner.cell_state(experiment, c) != "running" for c in experiment.cells)
    finished = {c.name for c in experiment.cells if runner.is_done(experiment, c)}
    assert finished and len(finished) < len(experiment.cells)
    before = trainings(experiment.work, run=0)

    process = start(path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert all(runner.is_done(experiment, c) for c in experiment.cells)
    again = trainings(experiment.work, run=1)
    assert not finished & set(again)  # a finished cell is not trained again
    assert sorted(set(before) | set(again)) == sorted(c.name for c in experiment.cells)
