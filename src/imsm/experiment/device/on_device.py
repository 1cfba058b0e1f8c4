"""The device side of `imsm pack-for-device`: unpack a call's parts, and in the last call run the
study end to end and pack its results into one archive in $OUT. Standard library only, run as a
file (`python3 src/imsm/experiment/device/on_device.py unpack|run CALL_FOLDER`), because it runs
before the wheels it installs; every call checks what is already unpacked and redoes what is missing.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ARCHIVE_LIMIT = 15 << 20  # a file $OUT brings back holds at most 16 MiB
REPORT_SECONDS = 60  # kept back from the last call's limit for the report and the archive
MISSING = 3  # exit code: parts of the study are not on the device (a call skipped, or the machine lost)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(path: Path, size: int, sha256: str) -> bool:
    return path.is_file() and path.stat().st_size == size and _sha256(path) == sha256


def _assemble(item: dict, root: Path) -> None:
    """Join an item's parts (all checked) into its file, unzipped and checked whole, then drop them."""
    destination = root / "files" / item["name"]
    destination.parent.mkdir(parents=True, exist_ok=True)
    stored = b"".join((root / "parts" / part["file"]).read_bytes() for part in item["parts"])
    data = gzip.decompress(stored) if item["gzip"] else stored
    if hashlib.sha256(data).hexdigest() != item["sha256"]:
        raise SystemExit(f"{item['name']}: the joined parts do not give the packed file's sha256; pack again")
    partial = destination.with_name(destination.name + ".partial")
    partial.write_bytes(data)
    partial.replace(destination)
    for part in item["parts"]:
        (root / "parts" / part["file"]).unlink()


def unpack(call_folder: Path, root: Path) -> dict[str, list[int]]:
    """Take this call's parts into `root`, assemble every file whose parts are all there, and
    return the files still missing with the calls that carry their missing parts."""
    manifest = json.loads((call_folder / "manifest.json").read_text(encoding="utf-8"))
    (root / "parts").mkdir(parents=True, exist_ok=True)
    missing: dict[str, list[int]] = {}
    for item in manifest["items"]:
        if _matches(root / "files" / item["name"], item["size"], item["sha256"]):
            continue  # unpacked by an earlier call on this machine
        absent = []
        for part in item["parts"]:
            kept = root / "parts" / part["file"]
            if _matches(kept, part["size"], part["sha256"]):
                continue
            if part["call"] == manifest["call"]:
                carried = call_folder / part["file"]
                if not _matches(carried, part["size"], part["sha256"]):
                    raise SystemExit(f"{carried} is damaged or missing (sha256 differs); pack again")
                shutil.copyfile(carried, kept)
            else:
                absent.append(part["call"])
        if absent:
            missing[item["name"]] = sorted(set(absent))
        else:
            _assemble(item, root)
    return missing


def _report_missing(missing: dict[str, list[int]], last: bool) -> None:
    calls = sorted({call for needed in missing.values() for call in needed})
    names = ", ".join(sorted(missing)[:4]) + (" ..." if len(missing) > 4 else "")
    where = "the machine was lost or a call was skipped: " if last else ""
    print(f"{len(missing)} files still to come ({names}); {where}make calls {', '.join(map(str, calls))} first")


def _install_wheels(manifest: dict, root: Path) -> None:
    """pip-install the carried wheels into ROOT/site once (again only if they changed)."""
    wheels = [root / "files" / item["name"] for item in manifest["items"] if item["name"].startswith("wheels/")]
    marker = root / "site" / ".installed"
    wanted = "\n".join(sorted(item["sha256"] for item in manifest["items"] if item["name"].startswith("wheels/")))
    if not wheels or (marker.is_file() and marker.read_text() == wanted):
        return
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade"]
    subprocess.run([*command, "--target", str(root / "site"), *map(str, wheels)], check=True)
    marker.write_text(wanted)


def _experiment_file(manifest: dict, root: Path) -> Path:
    """The experiment file as packed, reading the unpacked data and model, writing under ROOT
    (JSON is YAML). Work and results paths change no cell's name or settings."""
    experiment = dict(manifest["experiment"])
    experiment.update(data_dir=str(root / "files" / "data"), work=str(root / "work"), results=str(root / "results"))
    if manifest["model"]["kind"] == "directory":
        experiment["model"] = str(root / "files" / "model")
    path = root / "experiment.yaml"
    path.write_text(json.dumps(experiment, indent=1) + "\n", encoding="utf-8")
    return path


def _environment(manifest: dict, root: Path) -> dict[str, str]:
    if manifest["model"]["kind"] == "embedded":  # located by find_spec, never imported
        (root / "files" / "model-site" / manifest["model"]["package"] / "__init__.py").touch()
    paths = [root / "site", root / "files" / "model-site", Path.cwd() / "src"]
    python_path = os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return dict(os.environ, PYTHONPATH=python_path, PYTHONUNBUFFERED="1", IMSM_CACHE_DIR=str(root / "cache"))


def _device_lines(environment: dict[str, str]) -> str:
    """The device and the versions the study ran with, for $OUT/device.txt."""
    lines = []
    gpu = shutil.which("nvidia-smi")
    if gpu:
        query = [gpu, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        lines.append(subprocess.run(query, capture_output=True, text=True).stdout.strip())
    probe = (
        "import importlib.metadata as m, platform, torch; print('python', platform.python_version(), "
        "'torch', torch.__version__, 'cuda', torch.cuda.is_available(), *[f'{n} {m.version(n)}' for n in "
        "('transformers', 'peft', 'accelerate', 'gguf') if __import__('importlib.util').util.find_spec(n)])"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environment)
    lines.append(found.stdout.strip() or found.stderr.strip().splitlines()[-1])
    return "\n".join(lines) + "\n"


def _stream(command: list[str], environment: dict[str, str], log, deadline: float) -> int:
    """Run a command, its lines to the console and `log`; at `deadline` it gets SIGTERM (which
    `imsm experiment --workers` passes on to its workers), 30 s later SIGKILL. Returns its exit
    code, 124 when stopped at the deadline."""
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )

    def copy() -> None:
        for line in process.stdout:
            log.write(line)
            print(line, end="", flush=True)

    copier = threading.Thread(target=copy, daemon=True)
    copier.start()
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
        stopped = False
    except subprocess.TimeoutExpired:
        stopped = True
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    copier.join(timeout=10)
    return 124 if stopped else process.returncode


def _work_files(work: Path) -> tuple[list[Path], list[Path]]:
    """The work directory's small files worth bringing back (every example's rows, training
    summaries, the workers' logs), and the adapters (final and snapshots, no checkpoints)."""
    rows, adapters = [], []
    for path in sorted(work.rglob("*")) if work.is_dir() else []:
        relative = path.relative_to(work)
        if not path.is_file() or path.name.endswith(".partial.jsonl") or "checkpoints" in relative.parts:
            continue
        if (
            (path.name.startswith(("eval.", "original.")) and path.suffix == ".jsonl")
            or path.name in ("train_summary.json", "metrics.jsonl")
            or relative.parts[0] == ".workers"
        ):
            rows.append(path)
        elif path.name.startswith(("adapter_", "imsm_")) and (path.parent / "adapter_config.json").is_file():
            adapters.append(path)
    return rows, adapters


def _write_archive(path: Path, root: Path, files: list[Path]) -> int:
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w:gz") as archive:
        for file in files:
            archive.add(file, arcname=file.relative_to(root).as_posix())
    partial.replace(path)
    return path.stat().st_size


def pack_results(root: Path, out: Path) -> str:
    """$OUT/study-results.tar.gz: results/, report/ and work/'s rows, with the adapters when they
    fit under what $OUT brings back; returns what was left out, if anything."""
    tree = [p for name in ("results", "report") for p in sorted((root / name).rglob("*")) if p.is_file()]
    rows, adapters = _work_files(root / "work")
    archive = out / "study-results.tar.gz"
    left_out = ""
    if _write_archive(archive, root, tree + rows) > ARCHIVE_LIMIT:
        _write_archive(archive, root, tree)
        left_out = "the work directory's rows and the adapters (too large)"
    elif adapters:
        kept = _write_archive(archive, root, tree + rows + adapters)
        if kept > ARCHIVE_LIMIT:
            _write_archive(archive, root, tree + rows)
            left_out = f"the adapters ({kept / (1 << 20):.0f} MiB with them)"
    return left_out


def _grids_with_variants(manifest: dict) -> bool:
    return any(isinstance(g, dict) and g.get("variants") for g in manifest["experiment"].get("grids", {}).values())


def run(call_folder: Path, root: Path, out: Path) -> int:
    """Unpack what this call carries, then (everything there) run the study and pack its results."""
    started = time.monotonic()
    manifest = json.loads((call_folder / "manifest.json").read_text(encoding="utf-8"))
    missing = unpack(call_folder, root)
    if missing:
        _report_missing(missing, last=True)
        return MISSING
    _install_wheels(manifest, root)
    environment = _environment(manifest, root)
    experiment = str(_experiment_file(manifest, root))
    out.mkdir(parents=True, exist_ok=True)
    imsm = [sys.executable, "-m", "imsm"]
    with (out / "study.log").open("a", encoding="utf-8") as log:
        device = _device_lines(environment)
        log.write(device)
        print(device, end="", flush=True)
        if manifest["model"]["kind"] == "embedded":  # converted once here, not by every worker at once
            convert = f"from imsm.model.load import converted_embedded_model as c; c({manifest['model']['name']!r})"
            subprocess.run([*imsm[:1], "-c", convert], env=environment)  # a failure shows in the study
        deadline = started + manifest["seconds"] - REPORT_SECONDS
        workers = ["--workers", str(manifest["workers"])]
        code = _stream([*imsm, "experiment", experiment, *workers], environment, log, deadline)
        ran = time.monotonic() - started
        report = ["--output", str(root / "report" / "report.md"), "--plots", str(root / "report" / "plots")]
        reports = [["report", experiment, *report]]
        if _grids_with_variants(manifest):
            reports.append(["frontier", experiment, "--output", str(root / "report" / "frontier.md")])
        failed = [
            r[0] for r in reports if _stream([*imsm, *r], environment, log, time.monotonic() + REPORT_SECONDS / 2)
        ]
    left_out = pack_results(root, out)
    outcome = {0: "finished", 124: "cut at the time limit"}.get(code, f"failed (exit {code})")
    summary = f"study {outcome} after {ran:.0f} s of this call; results in $OUT/study-results.tar.gz"
    summary += f" (left out: {left_out})" if left_out else ""
    summary += f"; imsm {' and '.join(failed)} failed (see study.log)" if failed else ""
    (out / "device.txt").write_text(device + summary + "\n", encoding="utf-8")
    print(summary)
    if code == 124:
        print("make this same call again to go on: finished cells are kept on the device and skipped")
    return code


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("unpack", "run"), help="unpack: take this call's parts; run: also run")
    parser.add_argument("call_folder", type=Path, help="the call's folder, as packed (holds manifest.json)")
    parser.add_argument("--root", type=Path, help="where the study is kept between calls (default: as packed)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")), help="default: $OUT")
    options = parser.parse_args(arguments)
    manifest_path = options.call_folder / "manifest.json"
    if not manifest_path.is_file():
        parser.exit(2, f"{manifest_path} is missing; carry the call's folder (see commands.md)\n")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    root = options.root or Path(manifest["root"])
    if options.action == "run":
        return run(options.call_folder, root, options.out)
    missing = unpack(options.call_folder, root)
    done = len(manifest["items"]) - len(missing)
    print(
        f"call {manifest['call']} of {manifest['calls']}: {done} of {len(manifest['items'])} files unpacked in {root}"
    )
    if missing:
        _report_missing(missing, last=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
