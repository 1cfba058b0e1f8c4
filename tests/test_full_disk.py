"""A disk that fills up mid-write: one line naming the file and the fix, exit code 2, and the previous
file left as it was (everything is written under a temporary name, synced, then renamed).

A full disk is simulated with a file-size limit (RLIMIT_FSIZE) in a child process that ignores
SIGXFSZ, so a write past the limit fails with EFBIG, as one on a full disk fails with ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import save_tiny_model
from imsm.cli import main
from imsm.train.checkpoint import checkpoint_directories, read_checkpoint
from imsm.train.config import TrainConfig
from imsm.train.run import train

TESTS = Path(__file__).parent
PRELUDE = f"""
import resource, signal, sys
sys.path.insert(0, {str(TESTS)!r})

def limit_file_size(size):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
"""
REFUSED = "(File too large); the file is over this system's file-size limit"


def run_python(code: str, **environment) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **environment},
    )


def the_error_line(result: subprocess.CompletedProcess) -> str:
    """The child's one `imsm:` line on stderr (progress bars aside), after checking it exited 2."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("imsm:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    save_tiny_model(root / "model")
    rows = [{"q": f"w{3 + i} w{10 + i} w{20 + i}", "a": f"w{30 + i % 3}"} for i in range(8)]
    (root / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "probe.yaml").write_text(
        "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n"
    )
    return root


@pytest.mark.slow  # starts a Python process that imports torch
def test_the_final_adapter_save_of_imsm_train(workspace, tmp_path):
    run = tmp_path / "run"
    settings = dict(task=str(workspace / "probe.yaml"), model=str(workspace / "model"), output=str(run), batch_size=4,
                    micro_batch_size=2, epochs=1, dtype="fp32")  # fmt: skip
    train(TrainConfig(**settings), progress=False)
    # The run as a crash just before its end leaves it: --resume redoes the final save over the old files.
    (run / "train_summary.json").unlink()
    before = contents(run)
    argv = ["train", *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items()), "--resume"]
    result = run_python(f"from imsm.cli import main\nlimit_file_size(512)\nsys.exit(main({argv!r}))")
    line = the_error_line(result)
    assert line.startswith(f"imsm: error: could not write {run} {REFUSED}") and "is unchanged" in line
    assert contents(run) == before  # the adapter as it was, no summary, nothing half-written or left over


@pytest.mark.slow  # starts a Python process that imports torch
def test_a_checkpoint(tmp_path):
    code = f"""
    import torch
    from pathlib import Path
    from imsm.errors import IMSMError
    from imsm.train.checkpoint import save_checkpoint

    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    output = Path({str(tmp_path)!r})
    save_checkpoint(output, 2, model.state_dict(), optimizer, scheduler, {{"step": 2}})
    limit_file_size(4096)  # a 64x64 weight alone is 16 KiB
    try:
        save_checkpoint(output, 4, model.state_dict(), optimizer, scheduler, {{"step": 4}})
    except IMSMError as error:
        print(f"imsm: error: {{error}}", file=sys.stderr)
        sys.exit(2)
    """
    line = the_error_line(run_python(code))
    assert line.startswith(f"imsm: error: could not write {tmp_path / 'checkpoints' / 'step-000004'} {REFUSED}")
    assert [p.name for p in checkpoint_directories(tmp_path)] == ["step-000002"]
    assert read_checkpoint(tmp_path / "checkpoints" / "step-000002").trainable["weight"].shape == (64, 64)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002"]  # no staging left


@pytest.mark.slow  # starts a Python process that imports torch
def test_the_results_json_of_imsm_eval(workspace, tmp_path):
    def argv(output, limit):
        flags = {"model": workspace / "model", "task": workspace / "probe.yaml", "output": output, "limit": limit,
                 "dtype": "fp32", "chat-template": "off", "max-new-tokens": 3}  # fmt: skip
        return ["eval", *(f"--{flag}={value}" for flag, value in flags.items())]

    output = tmp_path / "out" / "results.json"
    assert main(argv(output, 6)) == 0  # the previous results
    assert main(argv(tmp_path / "sizes" / "results.json", 2)) == 0  # how large the new files will be
    predictions, results = (tmp_path / "sizes" / name for name in ("results.probe.jsonl", "results.json"))
    limit = (predictions.stat().st_size + results.stat().st_size) // 2
    assert predictions.stat().st_size < limit < results.stat().st_size  # the results JSON is what fails
    previous = contents(output.parent)
    result = run_python(f"from imsm.cli import main\nlimit_file_size({limit})\nsys.exit(main({argv(output, 2)!r}))")
    assert the_error_line(result).startswith(f"imsm: error: could not write {output} {REFUSED}")
    # The new predictions fitted but are not left beside the old results; the journal stays to resume from.
    assert {name: data for name, data in contents(output.parent).items() if ".partial." not in name} == previous
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.slow  # starts a Python process that imports torch
def test_the_conversion_of_the_embedded_model_into_its_cache(tmp_path):
    code = f"""
    from pathlib import Path
    from conftest import tiny_model, tiny_tokenizer
    from imsm.cli import main
    from imsm.model import load

    load._embedded_gguf_directory = lambda entry, name: Path({str(tmp_path)!r})
    load._convert_gguf = lambda entry, source, name: (tiny_model("llama"), tiny_tokenizer())
    limit_file_size(4096)  # the tiny model's weights are 100 KB
    sys.exit(main(["generate", "--model", "smollm2-135m", "--prompt", "w3", "--max-new-tokens", "2"]))
    """
    cache = tmp_path / "cache"
    line = the_error_line(run_python(code, IMSM_CACHE_DIR=str(cache)))
    assert line.startswith(f"imsm: error: could not write {cache / 'models' / 'smollm2-135m'} {REFUSED}")
    assert list((cache / "models").iterdir()) == []  # no copy that looks complete, no staging left


def test_a_journal_appended_to_on_a_full_disk_is_named_in_one_line(workspace, tmp_path, capsys, monkeypatch):
    def disk_full(descriptor):  # the journal's first batch is the first thing `imsm eval` syncs
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    output = tmp_path / "results.json"
    flags = {"model": workspace / "model", "task": workspace / "probe.yaml", "output": output, "dtype": "fp32",
             "chat-template": "off", "max-new-tokens": 2}  # fmt: skip
    code = main(["eval", *(f"--{flag}={value}" for flag, value in flags.items())])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsm:")]  # no progress bars
    assert code == 2 and lines == [
        f"imsm: error: could not write {tmp_path / 'results.probe.partial.jsonl'} (No space left on device); "
        "free some disk space and run again"
    ]
    assert not output.exists()
