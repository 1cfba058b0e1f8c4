"""`imsm pack-for-device` and the device side (`on_device.py`): what a study reads and nothing else,
in call folders under the limit, rejoined to the same bytes, and run end to end from a fresh folder."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import save_tiny_model
from imsm import IMSMError
from imsm.cli import main
from imsm.experiment.device import on_device
from imsm.experiment.device.pack import MIB, PackOptions, pack_for_device

ON_DEVICE = Path(on_device.__file__)
MRPC = [
    {"index": str(i), "Quality": str(i % 2), "#1 String": f"w{i} w{i + 1} sat.", "#2 String": f"w{i} w{i + 2} sat."}
    for i in range(12)
]
ARC = [
    {
        "id": str(i),
        "question": f"w{i} w{i + 3}?",
        "choices": {"text": [f"w{i}", f"w{i + 1}", f"w{i + 2}"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    }
    for i in range(6)
]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A repository (the tree a device call sends), a data directory with files the experiment
    reads and files it does not, a tiny model, an incompressible wheel, and the experiment file."""
    root = tmp_path_factory.mktemp("device")
    tree = root / "repo"
    tree.mkdir()
    (tree / "README.md").write_text("a small tree\n")
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run(["git", "-C", str(tree), "add", "README.md"], check=True)
    data = root / "data"
    write_rows(data / "mrpc" / "train.jsonl", MRPC)
    write_rows(data / "mrpc" / "test.jsonl", MRPC[:6])
    write_rows(data / "mrpc" / "dev.jsonl", MRPC[:3])  # not read: the experiment trains on train
    write_rows(data / "arc_easy" / "test.jsonl", ARC)
    write_rows(data / "sciq" / "test.jsonl", [{"question": "unread"}])  # a task the experiment does not name
    save_tiny_model(root / "model")
    wheels = root / "wheels"
    wheels.mkdir()
    (wheels / "fake-1.0-py3-none-any.whl").write_bytes(hashlib.sha256(b"x").digest() * 82000)  # 2.5 MiB
    experiment = {
        "name": "tiny-device",
        "model": str(root / "model"),
        "data_dir": str(data),
        "train": {"task": "mrpc", "peft": "lora", "limit": 8, "batch_size": 4, "micro_batch_size": 4, "dtype": "fp32"},
        "eval": {"limit": 4, "batch_size": 4, "max_new_tokens": 3},
        "original": ["arc_easy"],
        "grids": {
            "g": {
                "fusion": ["none", "imsm"],
                "seed": [0],
                "evaluate": ["target", "arc_easy"],
                "variants": [{}, {"step": 1}],
            }
        },
    }
    (root / "study.yaml").write_text(json.dumps(experiment))
    return root


def pack(study: Path, output: Path, **options) -> list[dict]:
    settings = {"wheel_dir": study / "wheels", "limit_mib": 1, "workers": 2, "seconds": 500, **options}
    return pack_for_device(PackOptions(file=study / "study.yaml", output=output, **settings), tree=study / "repo")


def test_a_pack_holds_every_file_the_study_reads_and_nothing_else(study, tmp_path):
    output = study / "repo" / f"pack-{tmp_path.name}"
    sequence = pack(study, output)
    manifest = json.loads((output / "call-1" / "manifest.json").read_text())
    names = {item["name"] for item in manifest["items"]}
    model = {f"model/{p.name}" for p in (study / "model").iterdir()}
    assert names == {"data/mrpc/train.jsonl", "data/mrpc/test.jsonl", "data/arc_easy/test.jsonl"} | model | {
        "wheels/fake-1.0-py3-none-any.whl"
    }
    # The calls: every folder but the last only unpacks; the last runs; each carries its own folder.
    assert len(sequence) == manifest["calls"] >= 2
    assert all(" unpack " in step["command"] for step in sequence[:-1]) and " run " in sequence[-1]["command"]
    assert [step["carry"] for step in sequence] == [[f"{output.name}/call-{n}"] for n in range(1, len(sequence) + 1)]
    # Each call folder, with the tree, stays under the (lowered) limit, and is git-ignored, as carried paths are.
    tree = sum(p.stat().st_size for p in (study / "repo").iterdir() if p.is_file())
    for folder in output.glob("call-*"):
        assert sum(p.stat().st_size for p in folder.iterdir()) + tree <= MIB
    ignored = subprocess.run(["git", "-C", str(study / "repo"), "check-ignore", "-q", f"{output.name}/call-1"])
    assert ignored.returncode == 0


def test_parts_rejoin_to_the_same_sha256_whatever_order_the_calls_come_in(study, tmp_path):
    output = study / "repo" / f"pack-{tmp_path.name}"
    sequence = pack(study, output)
    assert len(sequence) >= 3  # the 2.5 MiB wheel alone is cut across calls
    device = tmp_path / "device"
    folders = sorted(output.glob("call-*"), reverse=True)  # the last first: nothing it needs is there yet
    for folder in folders:
        missing = on_device.unpack(folder, device)
    assert not missing
    wheel = device / "files" / "wheels" / "fake-1.0-py3-none-any.whl"
    assert wheel.read_bytes() == (study / "wheels" / "fake-1.0-py3-none-any.whl").read_bytes()
    for source, unpacked in [(study / "data" / "mrpc" / "train.jsonl", device / "files" / "data/mrpc/train.jsonl")]:
        assert hashlib.sha256(unpacked.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    assert not list((device / "parts").iterdir())  # parts are dropped once joined
    # A lost machine: a fresh device given only the last call is told which calls to make again.
    lost = on_device.unpack(folders[0], tmp_path / "fresh")
    assert {call for calls in lost.values() for call in calls} == set(range(1, len(sequence)))
    # A damaged file on the device is found and taken again from the calls.
    wheel.write_bytes(b"damaged")
    assert "wheels/fake-1.0-py3-none-any.whl" in on_device.unpack(folders[-1], device)


def test_what_a_device_cannot_get_is_refused_in_one_line(study, tmp_path, capsys):
    experiment = json.loads((study / "study.yaml").read_text())
    bad = tmp_path / "hub.yaml"
    bad.write_text(json.dumps({**experiment, "model": "someone/some-model"}))
    with pytest.raises(IMSMError, match="cannot download it; give a local model directory"):
        pack_for_device(PackOptions(file=bad, output=study / "repo" / "x", wheel_dir=study / "wheels"), study / "repo")
    spec = tmp_path / "probe.yaml"  # a custom task outside the tree the device receives
    spec.write_text("name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n")
    write_rows(tmp_path / "probe.jsonl", [{"q": "w1", "a": "w2"}])
    bad.write_text(json.dumps({**experiment, "original": [str(spec)]}))
    with pytest.raises(IMSMError, match="does not travel with the working tree"):
        pack_for_device(PackOptions(file=bad, output=study / "repo" / "x", wheel_dir=study / "wheels"), study / "repo")
    assert main(["pack-for-device", str(study / "study.yaml"), "--output", str(tmp_path / "outside")]) == 2
    assert "is outside the repository" in capsys.readouterr().err


def test_a_study_past_its_time_is_stopped_and_the_last_call_keeps_time_to_start(study, tmp_path):
    log = io.StringIO()
    command = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    started = time.monotonic()
    assert on_device._stream(command, dict(os.environ), log, time.monotonic() + 2) == 124
    assert time.monotonic() - started < 30 and "started" in log.getvalue()
    with pytest.raises(IMSMError, match="give at most 570"):
        PackOptions(file=study / "study.yaml", output=tmp_path, seconds=590)


def test_a_custom_task_in_the_tree_travels_with_it_and_is_not_packed(study, tmp_path, monkeypatch):
    tree = study / "repo"
    (tree / "probes").mkdir(exist_ok=True)
    (tree / "probes" / "probe.yaml").write_text(
        "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n"
    )
    write_rows(tree / "probes" / "probe.jsonl", [{"q": "w1", "a": "w2"}])  # untracked, not ignored: it travels
    experiment = json.loads((study / "study.yaml").read_text())
    path = tmp_path / "custom.yaml"
    path.write_text(json.dumps({**experiment, "original": ["probes/probe.yaml"]}))
    monkeypatch.chdir(tree)  # the device runs in the repository root, so the packing does too
    output = tree / f"pack-{tmp_path.name}"
    pack_for_device(PackOptions(file=path, output=output, wheel_dir=study / "wheels"), tree)
    manifest = json.loads((output / "call-1" / "manifest.json").read_text())
    names = {item["name"] for item in manifest["items"]}
    assert "data/arc_easy/test.jsonl" in names and not any("probe" in name for name in names)  # the grid's


@pytest.mark.slow
def test_the_calls_run_back_to_back_from_a_fresh_folder_end_to_end(study, tmp_path):
    output = study / "repo" / f"pack-{tmp_path.name}"
    (tmp_path / "no-wheels").mkdir()  # a fake wheel would not install: this study carries none
    sequence = pack(study, output, wheel_dir=tmp_path / "no-wheels", limit_mib=2)
    fresh = tmp_path / "carried"  # what a device receives: only the call folders
    for step in sequence:
        shutil.copytree(study / "repo" / step["carry"][0], fresh / step["carry"][0])
    device, out = tmp_path / "device", tmp_path / "out"
    repository = Path(__file__).resolve().parents[1]  # the device runs in the repository root
    for step in sequence:
        action, folder = step["command"].split()[-2:]
        command = [
            sys.executable,
            str(ON_DEVICE),
            action,
            str(fresh / folder),
            "--root",
            str(device),
            "--out",
            str(out),
        ]
        done = subprocess.run(command, cwd=repository, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "study finished" in (out / "device.txt").read_text()
    with tarfile.open(out / "study-results.tar.gz") as archive:
        names = archive.getnames()
    assert "results/original/arc_easy.json" in names and {"report/report.md", "report/frontier.md"} <= set(names)
    assert sum(n.startswith("results/cells/") and n.endswith("result.json") for n in names) == 2
    assert any(n.endswith("eval.arc_easy.jsonl") for n in names) and any("adapter_model" in n for n in names)
    assert not any("checkpoints" in n for n in names)
    # The same last call again (the machine still warm) finds everything done and runs nothing.
    last = [sys.executable, str(ON_DEVICE), "run", str(fresh / sequence[-1]["carry"][0]), "--root", str(device)]
    again = subprocess.run([*last, "--out", str(out)], cwd=repository, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "2 done, 0 to run" in again.stdout
