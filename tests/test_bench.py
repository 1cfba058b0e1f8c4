"""Benchmarks: they run both variants in one go and report consistent figures."""

from __future__ import annotations

import json

import pytest

from conftest import save_tiny_model
from imsm.cli import main


@pytest.mark.slow
def test_bench_train_compares_vanilla_and_imsm_in_fresh_processes(tmp_path, capsys):
    save_tiny_model(tmp_path / "model")
    output = tmp_path / "bench" / "train.json"
    code = main(
        [
            "bench", "train", "--model", str(tmp_path / "model"), "--limit", "8", "--epochs", "2",
            "--batch-size", "4", "--micro-batch-size", "2", "--dtype", "fp32", "--output", str(output),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(output.read_text())
    vanilla, imsm = result["runs"]["vanilla"][0], result["runs"]["imsm"][0]
    # Same examples, epochs and batches: the same tokens and steps; only IMSM builds frozen memories.
    assert vanilla["tokens"] == imsm["tokens"] > 0
    assert vanilla["steps"] == imsm["steps"] == 4
    assert imsm["trainable_parameters"] > vanilla["trainable_parameters"]
    assert vanilla["frozen_cache_seconds"] < 0.05 < imsm["frozen_cache_seconds"] + 0.05
    assert result["throughput_ratio"] == imsm["tokens_per_s"] / vanilla["tokens_per_s"]
    assert result["peak_memory_ratio"] == imsm["peak_rss_mib"] / vanilla["peak_rss_mib"]
    assert 50 < vanilla["peak_rss_mib"] < 10_000
    assert 0 < vanilla["training_peak_rss_mib"] <= vanilla["peak_rss_mib"] + 1
    assert "cpus" in result["machine"] and result["settings"]["task"] == "animal_train"
    assert "IMSM / vanilla: throughput" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_train_reports_a_failed_run_in_one_line(tmp_path, capsys):
    code = main(["bench", "train", "--model", str(tmp_path / "missing"), "--limit", "4", "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the vanilla run (repeat 1) failed: model directory" in err[0]
    assert "does not exist" in err[0] and "Traceback" not in err[0]


def test_bench_decode_times_every_decoder_on_the_same_prompts(tmp_path, capsys):
    save_tiny_model(tmp_path / "model")
    output = tmp_path / "decode.json"
    code = main(
        [
            "bench", "decode", "--model", str(tmp_path / "model"), "--batch-size", "2", "--max-new-tokens", "6",
            "--naive-tokens", "3", "--repeats", "1", "--dtype", "fp32", "--output", str(output),
            "--skip", "compiled,hf_compiled",  # compiling takes a minute on a CPU: tests/test_bench_decode.py
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(output.read_text())
    for key in ("imsm_tokens_per_s", "vanilla_tokens_per_s", "merged_tokens_per_s", "naive_siamese_tokens_per_s"):
        assert result[key] > 0, key
    assert result["ratio"] == result["imsm_tokens_per_s"] / result["vanilla_tokens_per_s"]
    assert result["doubled_batch_ceiling"] > 0
    assert result["sampled_tokens_per_s"] > 0
    assert result["sampled_vs_greedy"] == pytest.approx(result["sampled_tokens_per_s"] / result["imsm_tokens_per_s"])
    assert result["batch_size"] == 2 and result["max_new_tokens"] == 6
    assert result["static_tokens_per_s"] > 0 and "compiled_tokens_per_s" not in result


def test_bench_eval_compares_imsm_with_the_same_adapter_without_it(tmp_path):
    save_tiny_model(tmp_path / "model")
    rows = [{"q": f"w{3 + i} w{10 + i}", "a": "yes" if i % 2 else "no"} for i in range(6)]
    (tmp_path / "yn.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "yn.yaml").write_text(
        "name: yn\ndata: yn.jsonl\nprompt: '{q}'\nanswer: a\nanswer_type: yes_no\n"
        "metrics: [accuracy]\nmax_new_tokens: 3\n"
    )
    output = tmp_path / "eval.json"
    code = main(
        [
            "bench", "eval", "--model", str(tmp_path / "model"), "--task", str(tmp_path / "yn.yaml"),
            "--limit", "6", "--batch-size", "3", "--repeats", "1", "--dtype", "fp32", "--output", str(output),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(output.read_text())
    assert result["examples"] == 6 and result["likelihood"] is True
    assert abs(result["ratio"] - result["imsm_examples_per_s"] / result["vanilla_examples_per_s"]) < 1e-9
    # The ceiling (vanilla time / time for every example twice) is reported; its value is a
    # timing, which benchmarks measure and tests do not.
    assert result["doubled_ceiling"] > 0


def test_bench_decode_refuses_unknown_skips(capsys):
    assert main(["bench", "decode", "--skip", "fast"]) == 2
    assert "--skip takes any of merged, doubled, sampled, naive" in capsys.readouterr().err


def test_bench_decode_builds_an_architecture_with_random_weights(tmp_path):
    # A config and a tokenizer, no weights: what a user has for a model too big to download.
    directory = save_tiny_model(tmp_path / "architecture")
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    output = tmp_path / "decode.json"
    code = main(
        [
            "bench", "decode", "--random-weights", "--model", str(directory), "--max-new-tokens", "4",
            "--repeats", "1", "--skip", "naive,merged,compiled,hf_compiled", "--dtype", "fp32", "--output", str(output),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(output.read_text())
    assert result["random_weights"] is True and result["imsm_tokens_per_s"] > 0


def test_bench_decode_random_weights_need_a_config(tmp_path, capsys):
    code = main(["bench", "decode", "--random-weights", "--model", str(tmp_path / "nothing.json")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --model to be a config.json" in err[0]
    (tmp_path / "other.json").write_text('{"hidden_size": 8}')
    assert main(["bench", "decode", "--random-weights", "--model", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a transformers model config" in err[0]


def test_the_shipped_llama3_8b_architecture_is_a_valid_config():
    from pathlib import Path

    from transformers import AutoConfig

    values = json.loads((Path(__file__).resolve().parents[1] / "configs/architectures/llama3-8b.json").read_text())
    config = AutoConfig.for_model(**values)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (4096, 32, 8)
