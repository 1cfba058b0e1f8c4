"""`imsm bench decode`'s compiled rows and issue 30's summary file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import save_tiny_model
from imsm.bench.decode import COMPILED_SUMMARY, compiled_summary
from imsm.cli import main

REPOSITORY = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {
    "machine",
    "model",
    "decode_compiled_b1_tokens_per_s",
    "decode_eager_b1_tokens_per_s",
    "transformers_compiled_b1_tokens_per_s",
}


@pytest.mark.slow
def test_bench_decode_times_the_compiled_decoders_and_writes_the_summary(tmp_path):
    """IMSM compiled, IMSM eager and transformers' compiled generate from one run; the summary
    holds exactly issue 30's keys (docs/results/perf/gpu/decode_compiled.json)."""
    save_tiny_model(tmp_path / "model")
    output, summary = tmp_path / "decode.json", tmp_path / "gpu" / "decode_compiled.json"
    code = main(
        [
            "bench", "decode", "--model", str(tmp_path / "model"), "--max-new-tokens", "6", "--repeats", "1",
            "--dtype", "fp32", "--skip", "merged,doubled,sampled,naive", "--output", str(output),
            "--summary", str(summary),
        ]
    )  # fmt: skip
    assert code == 0
    result, written = json.loads(output.read_text()), json.loads(summary.read_text())
    assert set(written) == SUMMARY_KEYS
    for key, row in COMPILED_SUMMARY.items():
        assert written[key] == result[row] > 0
    assert written["model"] == str(tmp_path / "model") and "cpus" in written["machine"]


def test_the_summary_needs_batch_1_and_the_compiled_rows(capsys):
    row = {"machine": "m", "model": "x", "batch_size": 1, **{r: 1.0 for r in COMPILED_SUMMARY.values()}}
    assert set(compiled_summary(row)) == SUMMARY_KEYS
    with pytest.raises(ValueError, match="batch 1"):
        compiled_summary({**row, "batch_size": 8})
    with pytest.raises(ValueError, match="hf_compiled_tokens_per_s"):
        compiled_summary({k: v for k, v in row.items() if k != "hf_compiled_tokens_per_s"})
    assert main(["bench", "decode", "--summary", "s.json", "--skip", "compiled"]) == 2
    assert "--summary needs --batch-size 1 and the compiled" in capsys.readouterr().err


@pytest.mark.slow
def test_the_device_script_writes_the_summary_from_a_local_model(tmp_path):
    """scripts/gpu_decode_compiled.sh on the CPU, a tiny local model in place of the packed GGUF:
    the same commands the GPU runs, so only the device and the model differ there."""
    save_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    environment = dict(
        os.environ, OUT=str(out), ROOT=str(tmp_path / "root"), PYTHON=sys.executable, MODEL=str(tmp_path / "model"),
        DTYPES="fp32", TOKENS="3", REPEATS="1",
    )  # fmt: skip
    done = subprocess.run(
        ["bash", "scripts/gpu_decode_compiled.sh"], cwd=REPOSITORY, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    written = json.loads((out / "decode_compiled_fp32.json").read_text())
    assert set(written) == SUMMARY_KEYS and written["decode_compiled_b1_tokens_per_s"] > 0
    assert (out / "decode-fp32.json").is_file() and (out / "device.txt").read_text().startswith("torch")


def test_the_device_script_stops_when_the_model_was_not_unpacked(tmp_path):
    environment = dict(os.environ, OUT=str(tmp_path / "out"), ROOT=str(tmp_path / "root"), PACK=str(tmp_path / "none"))
    done = subprocess.run(
        ["bash", "scripts/gpu_decode_compiled.sh"], cwd=REPOSITORY, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 3 and "make the pack's earlier calls first" in done.stderr
