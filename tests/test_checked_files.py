"""Reading saved files back: every kind of damage is named with the file and the fix, never a crash."""

from __future__ import annotations

import errno
import json
import re

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from conftest import DAMAGES, JSON_DAMAGES, damage, expected_problem
from imsm.atomic_write import disk_refusal
from imsm.checked_files import DamagedFile, check_safetensors, read_json, read_json_lines, read_safetensors

FIX = "re-save it"


@pytest.fixture
def tensors_file(tmp_path):
    path = tmp_path / "gate.safetensors"
    save_file({"W_A": torch.randn(16, 4), "W_B": torch.randn(4, 8), "steps": torch.arange(3)}, path)
    return path


def test_an_intact_file_reads_whole(tensors_file):
    tensors = read_safetensors(tensors_file, fix=FIX)
    assert set(tensors) == {"W_A", "W_B", "steps"} and tensors["W_A"].shape == (16, 4)
    assert check_safetensors(tensors_file, fix=FIX) == {"W_A": (16, 4), "W_B": (4, 8), "steps": (3,)}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_safetensors_file_is_named_with_its_problem_and_the_fix(tensors_file, how):
    damage(tensors_file, how)
    for read in (read_safetensors, check_safetensors):
        with pytest.raises(DamagedFile) as caught:
            read(tensors_file, fix=FIX)
        message = str(caught.value)
        assert message.startswith(f"{tensors_file} {expected_problem(tensors_file, how)}") and message.endswith(FIX)
        assert "\n" not in message


def test_a_header_check_reads_no_values(tensors_file):
    damage(tensors_file, "nan")
    assert check_safetensors(tensors_file, fix=FIX, values=False)["W_A"] == (16, 4)


def test_a_finite_sum_that_overflows_is_not_taken_for_inf(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.full((4,), 60000.0, dtype=torch.float16)}, path)  # sums past fp16's range
    assert read_safetensors(path, fix=FIX)["w"].dtype == torch.float16


@pytest.mark.parametrize("how", JSON_DAMAGES)
def test_a_damaged_json_file_is_named_with_its_problem_and_the_fix(tmp_path, how):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"position": {"step": 4}, "optimizer": {"lr": 0.1}}, indent=2))
    damage(path, how)
    with pytest.raises(DamagedFile, match=f"^{re.escape(f'{path} {expected_problem(path, how)}')}.*; {FIX}$"):
        read_json(path, fix=FIX)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b'{"position": 1}', "lacks the field 'optimizer'"),
        (b'{"a": "\xff"}', "is not JSON (not UTF-8 text: byte 7)"),
        (b'{"a": 1}\x00\x00', "holds NUL bytes (zero-filled or binary), not JSON"),
    ],
)
def test_json_that_is_not_the_object_expected_is_refused(tmp_path, content, problem):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(DamagedFile, match=f"^{re.escape(f'{path} {problem}; {FIX}')}$"):
        read_json(path, fix=FIX, keys=("position", "optimizer"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"a": 1}\n{"a": 2', "at line 2 is cut short or not valid JSON (Expecting ',' delimiter at column 8)"),
        (b'{"a": 1}\n\n[3]\n', "at line 3 holds a JSON list, not an object"),
        (bytes(16), "is zero-filled"),
        (b"\n\n", "is empty"),
    ],
)
def test_a_damaged_json_lines_file_is_named_with_the_line(tmp_path, content, problem):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(DamagedFile, match=f"^{re.escape(f'{path} {problem}; {FIX}')}$"):
        read_json_lines(path, fix=FIX)


def test_json_lines_read_as_objects_skipping_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_json_lines(path, fix=FIX) == [{"a": 1}, {"a": 2}]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DamagedFile, match="nowhere.safetensors is missing; re-save it"):
        read_safetensors(tmp_path / "nowhere.safetensors", fix=FIX)
    with pytest.raises(DamagedFile, match="nowhere.json is missing; re-save it"):
        read_json(tmp_path / "nowhere.json", fix=FIX)


def test_the_disk_refusing_a_write_is_told_apart_from_other_errors():
    assert disk_refusal(OSError(errno.ENOSPC, "No space left on device"))[1] == "free some disk space and run again"
    assert disk_refusal(SafetensorError("Error while serializing: I/O error: File too large (os error 27)"))
    assert disk_refusal(OSError(errno.ENOENT, "No such file or directory")) is None
    assert disk_refusal(SafetensorError("Error while serializing: invalid dtype")) is None
    assert disk_refusal(ValueError("no")) is None
