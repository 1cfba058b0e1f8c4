"""`imsm pack-for-device FILE --output DIR`: an experiment's model, data and wheels in call folders
that each fit, with the working tree, under what one device call carries, and the calls to make.

Every file is stored (text gzipped), cut into parts that fill the calls in order, and checked by
sha256 part by part and whole; every call folder holds the whole plan (`manifest.json`), so any
call can tell what is already unpacked on the device and what is missing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from imsm.cli.options import check_options, option
from imsm.errors import IMSMError
from imsm.experiment.device.needs import study_needs
from imsm.experiment.spec import load_experiment, read_experiment_file

MIB = 1 << 20
TEXT = (".jsonl", ".json", ".txt", ".yaml", ".yml", ".md")
ON_DEVICE = "src/imsm/experiment/device/on_device.py"
CALL_SECONDS = 600  # the most one device command may run
WHEELS = ("gguf", "peft")  # transformers reads GGUF through `gguf`; peft as pinned here


@dataclass
class PackOptions:
    """`imsm pack-for-device`: what a device machine needs to run an experiment file, in call folders."""

    file: Path = option(positional=True, help="experiment YAML file")
    output: Path = option(help="folder inside the repository (git-ignored: carried, not committed) for the calls")
    limit_mib: int = option(64, positive=True, help="MiB one device call carries, the working tree included")
    workers: int = option(4, positive=True, help="`imsm experiment --workers` on the device (they share the GPU)")
    seconds: int = option(540, positive=True, help="wall-clock seconds of the last call (its command's limit)")
    root: str = option("/root/imsm-study", help="where the device keeps what the calls unpack, between calls")
    wheel_dir: Path | None = option(
        None, help="carry the wheels in this folder (default: download gguf and peft at the versions installed here)"
    )

    def __post_init__(self) -> None:
        check_options(self)
        if self.seconds > CALL_SECONDS - 30:
            raise IMSMError(
                f"--seconds {self.seconds} leaves the last call no time to start and unpack within a device "
                f"command's {CALL_SECONDS} s; give at most {CALL_SECONDS - 30}"
            )


def _git(tree: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(tree), *arguments], capture_output=True, text=True)


def repository_root(start: Path) -> Path:
    found = _git(start, "rev-parse", "--show-toplevel")
    if found.returncode != 0:
        raise IMSMError(f"{start} is not in a git repository; run from the repository the device call sends")
    return Path(found.stdout.strip())


def travelling_files(tree: Path) -> dict[str, int]:
    """The files a device call sends (tracked, and untracked that git does not ignore) and their sizes."""
    listed = _git(tree, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    sizes = {}
    for name in filter(None, listed):
        path = tree / name
        if path.is_file() or path.is_symlink():
            sizes[name] = path.lstat().st_size
    return sizes


def _stored(destination: str, source: Path) -> tuple[bytes, dict[str, Any]]:
    """A file's bytes as carried (text gzipped, reproducibly) and its entry in the plan."""
    raw = source.read_bytes()
    compress = destination.endswith(TEXT)
    data = gzip.compress(raw, mtime=0) if compress else raw
    item = {"name": destination, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "gzip": compress}
    return data, item


def plan_calls(files: list[tuple[str, Path]], budget: int) -> tuple[list[dict], list[list[tuple[str, bytes]]]]:
    """Cut the stored files into parts that fill calls of `budget` bytes in order; returns the
    items (with their parts: file, call, size, sha256) and each call's (part file, bytes)."""
    items, calls = [], [[]]
    room = budget
    for index, (destination, source) in enumerate(files):
        data, item = _stored(destination, source)
        item["parts"] = []
        offset = 0
        while offset < len(data) or not item["parts"]:
            if room == 0:
                calls.append([])
                room = budget
            piece = data[offset : offset + room]
            name = f"p{index:04d}.{len(item['parts']):02d}"
            call = len(calls)
            item["parts"].append({"file": name, "call": call, "size": len(piece), "sha256": _sha(piece)})
            calls[-1].append((name, piece))
            offset += len(piece)
            room -= len(piece)
        items.append(item)
    return items, calls


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gather_wheels(options: PackOptions) -> list[tuple[str, Path]]:
    """The wheels to carry: those in --wheel-dir, or gguf and peft downloaded at this machine's versions."""
    folder = options.wheel_dir
    if folder is not None:
        if not folder.is_dir():
            raise IMSMError(f"--wheel-dir {str(folder)!r} is not a folder; give the folder holding the .whl files")
        return [(f"wheels/{wheel.name}", wheel) for wheel in sorted(folder.glob("*.whl"))]
    folder = options.output / ".wheels"  # kept between packings; only the pinned versions are carried
    pins = [f"{name}=={version(name)}" for name in WHEELS]

    def pinned() -> list[Path]:
        return [wheel for pin in pins for wheel in sorted(folder.glob(f"{pin.replace('==', '-')}-*.whl"))[:1]]

    if len(pinned()) < len(pins):
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        done = subprocess.run([*command, "-d", str(folder), *pins], capture_output=True, text=True)
        if done.returncode != 0 or len(pinned()) < len(pins):
            reason = (done.stderr.strip().splitlines() or ["no wheel found"])[-1]
            raise IMSMError(f"could not download {', '.join(pins)} ({reason}); pass --wheel-dir with them")
    return [(f"wheels/{wheel.name}", wheel) for wheel in pinned()]


def _commands(output: Path, tree: Path, calls: int, seconds: int) -> list[dict[str, Any]]:
    """The device calls to make back to back: each carries its folder; the last one runs."""
    relative = output.resolve().relative_to(tree.resolve()).as_posix()
    sequence = []
    for call in range(1, calls + 1):
        folder = f"{relative}/call-{call}"
        last = call == calls
        action = "run" if last else "unpack"
        command = f"python3 {ON_DEVICE} {action} {folder}"
        sequence.append(
            {"call": call, "carry": [folder], "command": command, "timeout_s": seconds + 30 if last else 300}
        )
    return sequence


def _ignore(output: Path) -> None:
    """Git-ignore the output folder's contents, which the calls carry (a carried path must be
    ignored), with a `.gitignore` of its own rather than an edit of the repository's settings."""
    (output / ".gitignore").write_text("*\n", encoding="utf-8")


def _write_calls(options: PackOptions, plan: dict[str, Any], calls: list[list[tuple[str, bytes]]]) -> list[int]:
    """Each call's folder, afresh: its parts and the whole plan; returns the folders' sizes."""
    for stale in options.output.glob("call-*"):
        shutil.rmtree(stale)
    sizes = []
    for number, parts in enumerate(calls, start=1):
        folder = options.output / f"call-{number}"
        folder.mkdir(parents=True)
        for name, data in parts:
            (folder / name).write_bytes(data)
        manifest = json.dumps({**plan, "call": number}, indent=1, default=str)
        (folder / "manifest.json").write_text(manifest + "\n", encoding="utf-8")
        sizes.append(sum(p.stat().st_size for p in folder.iterdir()))
    return sizes


def _describe(sequence: list[dict[str, Any]], experiment: str) -> str:
    lines = [f"# Device calls for {experiment}, back to back (a lost machine: start again at call 1)", ""]
    for step in sequence:
        lines += [
            f"call {step['call']}: carry {step['carry'][0]}, timeout_s {step['timeout_s']}",
            f"    {step['command']}",
        ]
    lines += ["", "The last call leaves the results in $OUT/study-results.tar.gz (see docs/experiments.md)."]
    return "\n".join(lines) + "\n"


def pack_for_device(options: PackOptions, tree: Path | None = None, log=print) -> list[dict[str, Any]]:
    """Pack what the device needs for `options.file` into `options.output`; returns the calls."""
    experiment = load_experiment(options.file)
    tree = tree or repository_root(Path.cwd())
    output = options.output.resolve()
    if not output.is_relative_to(tree.resolve()):
        raise IMSMError(
            f"--output {str(options.output)!r} is outside the repository {tree}; a device call carries only paths in it"
        )
    output.mkdir(parents=True, exist_ok=True)
    _ignore(output)
    sizes = travelling_files(tree)
    limit = options.limit_mib * MIB
    # Kept free for the manifests and what the tree gains between packing and the calls.
    margin = min(MIB, limit // 16)
    budget = limit - sum(sizes.values()) - margin
    if budget < limit // 8:
        raise IMSMError(
            f"the working tree ({sum(sizes.values()) / MIB:.1f} MiB) leaves no room under --limit-mib "
            f"{options.limit_mib}; ignore large untracked files or raise the limit"
        )
    needs = study_needs(experiment, tree, set(sizes))
    items, calls = plan_calls(needs.files + gather_wheels(options), budget)
    plan = {
        "format": 1,
        "experiment": read_experiment_file(options.file),
        "name": experiment.name,
        "model": needs.model,
        "workers": options.workers,
        "seconds": options.seconds,
        "root": options.root,
        "calls": len(calls),
        "items": items,
    }
    folders = _write_calls(options, plan, calls)
    assert all(size + sum(sizes.values()) <= options.limit_mib * MIB for size in folders)
    sequence = _commands(output, tree, len(calls), options.seconds)
    (output / "commands.json").write_text(json.dumps(sequence, indent=1) + "\n", encoding="utf-8")
    (output / "commands.md").write_text(_describe(sequence, experiment.name), encoding="utf-8")
    total, tree_size = sum(item["size"] for item in items), sum(sizes.values())
    log(
        f"{len(items)} files ({total / MIB:.1f} MiB) in {len(calls)} calls of at most {max(folders) / MIB:.1f} MiB "
        f"beside the {tree_size / MIB:.1f} MiB tree; the calls to make: {output}/commands.md"
    )
    return sequence
