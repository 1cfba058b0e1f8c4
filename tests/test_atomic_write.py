"""Atomic writes: a target is replaced whole or left as it was, and no temporary outlives the write."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from imsm.atomic_write import DiskRefusedWrite, atomic_path, staged_directory, write_atomically, write_together


class Interrupted(Exception):
    """Stands for a crash (or a full disk) half-way through a write."""


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("data", ["héllo\nwörld\n", b"\x00\x01binary"])
def test_write_atomically_writes_text_and_bytes(tmp_path, data):
    path = tmp_path / "out.json"
    path.write_text("old")
    write_atomically(path, data)
    assert (path.read_bytes() if isinstance(data, bytes) else path.read_text(encoding="utf-8")) == data
    assert _leftovers(tmp_path) == []


def test_previous_file_survives_an_exception_mid_write(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"complete": true}\n')
    with pytest.raises(Interrupted), atomic_path(path) as temporary:
        temporary.write_text('{"compl')  # half a file, then the crash
        raise Interrupted
    assert path.read_text() == '{"complete": true}\n'
    assert _leftovers(tmp_path) == []


def test_a_failed_write_creates_nothing(tmp_path, monkeypatch):
    def failing_replace(source, destination):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_atomically(tmp_path / "new.txt", "text")
    assert list(tmp_path.iterdir()) == []


def test_files_written_together_all_change_or_none(tmp_path, monkeypatch):
    rows, results = tmp_path / "rows.jsonl", tmp_path / "results.json"
    rows.write_text("old rows\n")
    results.write_text("old results\n")
    real_write = Path.write_text

    def disk_full_at_results(path, data, **kwargs):
        if path.name.startswith(".results.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_at_results)
    with pytest.raises(DiskRefusedWrite, match=f"could not write {re.escape(str(results))} .*free some disk space"):
        write_together({rows: "new rows\n", results: "new results\n"})
    assert (rows.read_text(), results.read_text()) == ("old rows\n", "old results\n")
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    write_together({rows: "new rows\n", results: b"new results\n"})
    assert (rows.read_text(), results.read_text()) == ("new rows\n", "new results\n")


def test_files_written_together_are_renamed_in_the_order_given(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(Path(b).name), real_replace(a, b))[1])
    write_together({tmp_path / "b.jsonl": "rows", tmp_path / "a.json": "summary"})
    assert renamed == ["b.jsonl", "a.json"]


def test_the_file_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_atomically(tmp_path / "out.txt", "text")
    assert events == ["fsync", "replace", "fsync"]  # the file, its rename, then the directory holding it


def test_temporary_keeps_the_suffix_for_writers_that_read_it(tmp_path):
    # matplotlib's savefig picks the format from the file name.
    with atomic_path(tmp_path / "plot.png") as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".png" and temporary.name.startswith(".")
        temporary.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"
    assert _leftovers(tmp_path) == []


def _fill(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)


def _contents(directory):
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("if_exists", ["replace", "keep", "merge"])
def test_previous_directory_survives_an_exception_mid_write(tmp_path, if_exists):
    target = tmp_path / "step-000010"
    _fill(target, {"state.json": "old", "sub/a.txt": "old"})
    with pytest.raises(Interrupted), staged_directory(target, if_exists=if_exists) as staging:
        _fill(staging, {"state.json": "new", "sub/a.txt": "new"})
        raise Interrupted
    assert _contents(target) == {"state.json": "old", "sub/a.txt": "old"}
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("if_exists", "expected"),
    [
        ("replace", {"b.txt": "new", "sub/y.txt": "new"}),
        ("keep", {"a.txt": "old", "sub/x.txt": "old"}),
        ("merge", {"a.txt": "old", "b.txt": "new", "sub/y.txt": "new"}),
    ],
)
def test_staged_directory_over_an_existing_one(tmp_path, if_exists, expected):
    target = tmp_path / "run"
    _fill(target, {"a.txt": "old", "sub/x.txt": "old"})
    with staged_directory(target, if_exists=if_exists) as staging:
        assert staging.parent == tmp_path and list(staging.iterdir()) == []
        _fill(staging, {"b.txt": "new", "sub/y.txt": "new"})
    assert _contents(target) == expected
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("if_exists", ["replace", "keep", "merge"])
def test_staged_directory_creates_a_missing_target(tmp_path, if_exists):
    target = tmp_path / "cache" / "model"
    with staged_directory(target, if_exists=if_exists) as staging:
        _fill(staging, {"config.json": "{}"})
    assert _contents(target) == {"config.json": "{}"}
    assert _leftovers(target.parent) == []


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_privately_staged_file_gets_the_umasks_permissions(tmp_path, umask_022):
    # safetensors creates its files 0600; a saved adapter must stay readable to the machine's other users.
    with atomic_path(tmp_path / "adapter_model.safetensors") as temporary:
        temporary.write_bytes(b"weights")
        os.chmod(temporary, 0o600)
    assert _mode(tmp_path / "adapter_model.safetensors") == 0o644


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask_022):
    target = tmp_path / "secret.json"
    target.write_text("old")
    os.chmod(target, 0o600)  # the user closed it off: a rewrite must not open it up
    write_atomically(target, "new")
    assert _mode(target) == 0o600 and target.read_text() == "new"


def test_a_staged_directory_gets_the_umasks_permissions(tmp_path, umask_022):
    target = tmp_path / "adapter"
    with staged_directory(target) as staging:
        assert _mode(staging) == 0o700  # mkdtemp's: private while it is filled
        _fill(staging, {"config.json": "{}", "sub/gate.safetensors": "g"})
        os.chmod(staging / "sub" / "gate.safetensors", 0o600)
    assert [_mode(target), _mode(target / "sub"), _mode(target / "config.json")] == [0o755, 0o755, 0o644]
    assert _mode(target / "sub" / "gate.safetensors") == 0o644
