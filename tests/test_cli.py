"""The command line: real runs on a tiny local model, and one clear line for bad input."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from conftest import peft_config, perturb_adapter, save_tiny_model, tiny_model
from imsm import IMSMConfig, IMSMError, get_imsm_model
from imsm.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    perturb_adapter(model)
    directory = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(directory)
    return directory


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_prints_one_answer_per_prompt(capsys, model_dir, adapter_dir):
    code, out, _ = run(
        capsys,
        "generate",
        "--model",
        str(model_dir),
        "--adapter",
        str(adapter_dir),
        "--dtype",
        "fp32",
        "--prompt",
        "w3 w4 w5",
        "--prompt",
        "w9 w8",
        "--max-new-tokens",
        "4",
        "--chat-template",
        "off",
    )
    assert code == 0
    assert out.startswith("[1] w3 w4 w5\n") and "[2] w9 w8\n" in out
    answers = [line for line in out.splitlines() if line and not line.startswith("[")]
    assert len(answers) == 2 and all(word.startswith("w") for a in answers for word in a.split())


def test_generate_matches_the_python_api(capsys, model_dir, adapter_dir):
    from imsm import IMSMModel

    code, out, _ = run(
        capsys,
        "generate",
        "--model",
        str(model_dir),
        "--adapter",
        str(adapter_dir),
        "--dtype",
        "fp32",
        "--prompt",
        "w3 w4 w5",
        "--max-new-tokens",
        "5",
        "--chat-template",
        "off",
    )
    model = IMSMModel.from_pretrained(tiny_model("llama"), adapter_dir)
    ids = model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=5)[0, 3:]
    expected = " ".join(f"w{int(i)}" for i in ids if int(i) > 2)
    assert code == 0 and out.strip() == expected


def test_yaml_config_sets_flags_and_the_command_line_wins(capsys, model_dir, tmp_path):
    config = tmp_path / "generate.yaml"
    config.write_text(f"model: {model_dir}\nmax-new-tokens: 2\nchat_template: 'off'\ndtype: fp32\nprompt: ['w3 w4']\n")
    code, out, _ = run(capsys, "generate", "--config", str(config))
    assert code == 0 and len(out.split()) == 2
    code, out, _ = run(capsys, "generate", "--config", str(config), "--max-new-tokens", "3")
    assert code == 0 and len(out.split()) == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "smollm2-13m"], "did you mean 'smollm2-135m'"),
        (["--model", "./no/such/dir"], "does not exist"),
        (["--adapter", "/no/such/adapter"], "adapter directory '/no/such/adapter' does not exist"),
        (["--dtype", "fp64"], "unknown dtype 'fp64'"),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(capsys, argv, message):
    code, out, err = run(capsys, "generate", "--prompt", "hi", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("imsm: error: ") and message in err


def test_hub_id_not_cached_while_offline_fails_at_once(capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run(capsys, "generate", "--model", "someone/missing-model", "--prompt", "hi")
    assert code == 2 and "not in the local Hugging Face cache" in err


def test_pickle_only_model_directory_is_refused(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    code, _, err = run(capsys, "generate", "--model", str(tmp_path), "--prompt", "hi")
    assert code == 2 and "only pickle weights" in err


def test_adapter_for_another_base_model_is_refused(capsys, adapter_dir, tmp_path):
    other = save_tiny_model(tmp_path / "qwen", architecture="qwen2")
    code, out, err = run(capsys, "generate", "--model", str(other), "--adapter", str(adapter_dir), "--prompt", "w3")
    assert code == 2 and "made for another base model" in err and out == ""


def test_yaml_config_errors(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_new_token: 3\n")
    code, _, err = run(capsys, "generate", "--config", str(bad))
    assert code == 2 and "unknown option(s) ['max_new_token'] (did you mean 'max_new_tokens'?)" in err
    code, _, err = run(capsys, "generate", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_new_tokens: 0", "max_new_tokens must be a positive integer, got 0"),
        ("max_new_tokens: '0'", "max_new_tokens: expected a positive integer, got 0"),
        ("chat_template: off", "chat_template must be one of auto, on, off, got False"),
        ("prompt: []", "no prompt given"),
    ],
)
def test_yaml_values_are_checked_like_flags_before_any_model_load(capsys, tmp_path, text, message):
    config = tmp_path / "generate.yaml"
    config.write_text(f"model: /no/such/model\nprompt: hi\n{text}\n")
    code, out, err = run(capsys, "generate", "--config", str(config))
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_options_come_from_defaults_then_the_yaml_file_then_the_flags(tmp_path):
    from imsm.cli.app import build_parser
    from imsm.cli.evaluate import EvalOptions
    from imsm.cli.options import read_options

    config = tmp_path / "eval.yaml"
    config.write_text("task: mrpc,webq\noutput: out.json\nlimit: '5'\nbatch-size: 2\nlikelihood: false\n")
    args = build_parser().parse_args(["eval", "--config", str(config), "--batch-size", "3", "--no-resume"])
    options = read_options(args)
    assert options == EvalOptions(
        task="mrpc,webq", output="out.json", limit=5, batch_size=3, likelihood=False, resume=False
    )
    with pytest.raises(IMSMError, match=r"--output is required \(on the command line or in the --config file\)"):
        read_options(build_parser().parse_args(["eval", "--task", "mrpc"]))


def test_every_option_of_every_command_is_a_documented_field():
    import dataclasses

    from imsm.cli.app import build_parser

    def commands(parser, prefix=""):
        for action in parser._actions:  # where argparse keeps subcommands; fine for a test to read
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield prefix + name, sub
                    yield from commands(sub, f"{prefix}{name} ")

    seen = 0
    for name, parser in commands(build_parser()):
        options = parser.get_default("options_class")
        if options is None:  # `bench` only groups its modes
            continue
        seen += 1
        dests = {a.dest for a in parser._actions} - {"help", "config"}
        assert dests == {f.name for f in dataclasses.fields(options)}, name
        assert all(f.metadata.get("help") for f in dataclasses.fields(options)), name
    # generate, chat, eval, train, demo, inspect-gate, 4 bench modes, experiment, pack-for-device, report, frontier,
    # verdicts
    assert seen == 15


@pytest.mark.slow
def test_the_installed_command_prints_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "imsm", "generate", "--model", "nope", "--prompt", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines() == [result.stderr.strip()]


def test_eval_checks_the_variant_once_and_loads_it_as_checked(capsys, model_dir, adapter_dir, tmp_path, monkeypatch):
    import imsm.cli.model_options as model_options

    checked = []

    def counting(*args):
        checked.append(args)
        return check_variant(*args)

    check_variant = model_options.check_variant
    monkeypatch.setattr(model_options, "check_variant", counting)
    monkeypatch.setattr("imsm.model.variant.check_variant", counting)  # where the load would check again
    (tmp_path / "probe.jsonl").write_text('{"q": "w3 w4", "a": "w5"}\n')
    spec = "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\nmax_new_tokens: 2\n"
    (tmp_path / "probe.yaml").write_text(spec)
    output = tmp_path / "out.json"
    argv = ["eval", "--model", str(model_dir), "--adapter", str(adapter_dir), "--fusion", "mean", "--dtype", "fp32"]
    code, _, err = run(capsys, *argv, "--task", str(tmp_path / "probe.yaml"), "--output", str(output))
    assert code == 0, err
    assert checked == [(str(adapter_dir), "mean", 1.0, None)]  # no intruders reduced
    header = json.loads(output.read_text())
    assert (header["adapter"], header["fusion"], header["adapter_scale"], header["dtype"]) == (
        str(adapter_dir),
        "mean",
        1.0,
        "float32",
    )


def test_yaml_reads_an_exponent_without_a_dot_as_the_number_meant():
    """PyYAML follows YAML 1.1, where `1e-4` is text; a learning rate written so must be a number."""
    from imsm.yaml_file import load_yaml

    text = "a: 1e-4\nb: -2E3\nc: 1.5e-3\nd: 1e\ne: '1e-4'\nf: 10\ng: 0x10\n"
    assert load_yaml(text) == {"a": 1e-4, "b": -2000.0, "c": 1.5e-3, "d": "1e", "e": "1e-4", "f": 10, "g": 16}
