"""Reading back saved files (safetensors and JSON), checked: a damaged one is refused in one line.

A file cut short by a kill or a full disk, zero-filled by a crash, replaced by another kind of file,
or holding NaN or infinite tensors raises `DamagedFile`, whose message names the file, what is wrong
with it and the fix the caller knows (re-save, re-train, delete it to recompute it). Nothing here
unpickles: only safetensors and JSON are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from imsm.errors import IMSMError


class DamagedFile(IMSMError):
    """A file that is missing from where it must be, cut short, zero-filled, not the format it
    claims, or holds non-finite tensors. `path` and `problem` let a caller that can recover
    (an older checkpoint, a cache rebuilt) say what it skipped."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str):
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path} {problem}; {fix}")


def _safetensors_problem(path: Path, error: SafetensorError) -> str:
    with path.open("rb") as handle:
        start = handle.read(4096)
    if start and not start.strip(b"\0"):  # a crash can leave a file's blocks allocated but unwritten
        return "is zero-filled"
    detail = str(error).removeprefix("Error while deserializing header: ")
    return f"is cut short or not a safetensors file ({detail})"


def _all_finite(tensor: torch.Tensor) -> bool:
    # One sum rather than a mask the size of the tensor (5x faster on a model's weights): NaN and
    # inf carry through it. A sum that overflows from finite entries is told apart by the mask.
    return bool(torch.isfinite(tensor.sum(dtype=torch.float32))) or bool(torch.isfinite(tensor).all())


def _read_tensors(path: Path, fix: str, values: bool, keep: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        # safe_open checks that the header parses and that its offsets cover the file exactly,
        # which is what a cut, a zero-filled or a foreign file fails.
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if not values:
                    found[name] = tuple(handle.get_slice(name).get_shape())
                    continue
                tensor = handle.get_tensor(name)  # one at a time: a model's weights need not fit twice
                if tensor.is_floating_point() and not _all_finite(tensor):
                    raise DamagedFile(path, f"holds non-finite values (NaN or inf) in tensor {name!r}", fix)
                found[name] = tensor if keep else tuple(tensor.shape)
    except FileNotFoundError:
        raise DamagedFile(path, "is missing", fix) from None
    except SafetensorError as error:
        raise DamagedFile(path, _safetensors_problem(path, error), fix) from None
    except OSError as error:  # a directory in its place, unreadable
        raise DamagedFile(path, f"cannot be read ({error.strerror})", fix) from None
    return found


def read_safetensors(path: str | os.PathLike, *, fix: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, each floating one checked to be finite.

    Args:
        path: the file.
        fix: what the user should do if it is damaged, e.g. "re-save the adapter".

    Raises:
        DamagedFile: missing, cut short, zero-filled, not safetensors, or holding NaN/inf.
    """
    return _read_tensors(Path(path), fix, values=True, keep=True)


def check_safetensors(path: str | os.PathLike, *, fix: str, values: bool = True) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a safetensors file, after checking it like `read_safetensors` without
    keeping the tensors. With `values=False` only the header is checked (cheap on any size)."""
    return _read_tensors(Path(path), fix, values=values, keep=False)


def _read_text(path: Path, fix: str) -> str:
    """A saved text file's contents, refused when missing, unreadable, not UTF-8, zero-filled or empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedFile(path, "is missing", fix) from None
    except UnicodeDecodeError as error:
        raise DamagedFile(path, f"is not JSON (not UTF-8 text: byte {error.start})", fix) from None
    except OSError as error:
        raise DamagedFile(path, f"cannot be read ({error.strerror})", fix) from None
    if "\0" in text:  # JSON never holds a raw NUL; a crash can leave a file's blocks zero-filled
        zeros = not text.strip("\0")
        raise DamagedFile(path, "is zero-filled" if zeros else "holds NUL bytes (zero-filled or binary), not JSON", fix)
    if not text.strip():
        raise DamagedFile(path, "is empty", fix)
    return text


def _json_object(path: Path, text: str, fix: str, where: str = "") -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        at = f"line {error.lineno} column {error.colno}" if not where else f"column {error.colno}"
        raise DamagedFile(path, f"{where}is cut short or not valid JSON ({error.msg} at {at})", fix) from None
    if not isinstance(value, dict):
        raise DamagedFile(path, f"{where}holds a JSON {type(value).__name__}, not an object", fix)
    return value


def read_json(path: str | os.PathLike, *, fix: str, keys: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON file that must hold an object (with `keys`, if given).

    Raises:
        DamagedFile: missing, cut short, zero-filled, not JSON, not an object, or lacking a key.
    """
    path = Path(path)
    value = _json_object(path, _read_text(path, fix), fix)
    missing = [key for key in keys if key not in value]
    if missing:
        raise DamagedFile(path, f"lacks the field {missing[0]!r}", fix)
    return value


def read_json_lines(path: str | os.PathLike, *, fix: str) -> list[dict[str, Any]]:
    """A JSON Lines file this package wrote (per-example rows): one object per non-blank line.

    Raises:
        DamagedFile: missing, zero-filled, empty, or a line that is not a JSON object (named by number).
    """
    path = Path(path)
    text = _read_text(path, fix)
    lines = enumerate(text.splitlines(), start=1)
    return [_json_object(path, line, fix, f"at line {number} ") for number, line in lines if line.strip()]
