"""Gate inspection: its NLLs are the evaluation's, its initial gate is the run's, its shape
statistics mean what they say."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import peft_config, perturb_adapter, save_tiny_model, tiny_model
from imsm import IMSMConfig, IMSMError, get_imsm_model
from imsm.cli import main
from imsm.evaluation.gate_inspection import format_report, initial_gate, inspect_gate
from imsm.evaluation.generation import score_targets
from imsm.model.load import load_model_and_tokenizer
from imsm.model.siamese import IMSMModel
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task
from imsm.train.config import TrainConfig
from imsm.train.run import train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    save_tiny_model(root / "model")
    for name, offset in (("alpha", 0), ("beta", 40)):
        rows = [{"q": f"w{3 + i + offset} w{10 + i}", "a": f"w{30 + i % 3} w{50 + i % 5}"} for i in range(6)]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / f"{name}.yaml").write_text(
            f"name: {name}\ndata: {name}.jsonl\nprompt: '{{q}}'\nanswer: a\nmetrics: [exact_match]\n"
        )
    return root


def tasks_and_records(workspace, *names):
    from imsm.data import load_examples

    data = {}
    for name in names:
        task = get_task(str(workspace / f"{name}.yaml"))
        data[task.name] = (task, load_examples(task, None, None, None))
    return data


def trained_run(workspace, output, gate_learning_rate):
    cfg = TrainConfig(
        task=str(workspace / "alpha.yaml"),
        output=str(output),
        model=str(workspace / "model"),
        batch_size=3,
        micro_batch_size=3,
        max_steps=2,
        learning_rate=1e-2,
        gate_learning_rate=gate_learning_rate,
        dtype="fp32",
        seed=3,
    )
    train(cfg, progress=False)
    return output


@pytest.fixture(scope="module")
def perturbed(workspace):
    base, tokenizer = load_model_and_tokenizer(str(workspace / "model"), "fp32", "cpu")
    model = get_imsm_model(base, peft_config("lora", "llama"), IMSMConfig())
    perturb_adapter(model)
    return model.eval(), PromptFormatter.for_tokenizer(tokenizer, "off")


def evaluation_nll(model, formatter, data):
    (task, records) = next(iter(data.values()))
    nll, _, _ = score_targets(model, formatter, [task.prompt(r) for r in records], [task.target(r) for r in records])
    return sum(nll) / len(nll)


def test_gold_nll_under_the_gate_and_its_stand_ins_match_the_evaluation(workspace, perturbed, tmp_path):
    model, formatter = perturbed
    data = tasks_and_records(workspace, "alpha")
    (report,) = inspect_gate(model, formatter, data)
    assert report.gold_nll["gate"] == pytest.approx(evaluation_nll(model, formatter, data), abs=1e-5)
    # g = 0 is the adapter without fusion, g = 1 the base model.
    model.save_pretrained(tmp_path / "adapter")
    for leftover in ("imsm_config.json", "imsm_gate.safetensors"):
        (tmp_path / "adapter" / leftover).unlink()  # what remains is a plain peft adapter
    base, _ = load_model_and_tokenizer(str(workspace / "model"), "fp32", "cpu")
    vanilla = IMSMModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    assert report.gold_nll["tuned_only"] == pytest.approx(evaluation_nll(vanilla, formatter, data), abs=1e-5)
    original = IMSMModel(base, IMSMConfig(fusion="none")).eval()
    assert report.gold_nll["frozen_only"] == pytest.approx(evaluation_nll(original, formatter, data), abs=1e-5)
    assert report.gold_nll["tuned_only"] != pytest.approx(report.gold_nll["frozen_only"], abs=1e-3)
    assert "initial" not in report.gold_nll and report.moved is None


def test_decisiveness_runs_from_an_even_mix_to_one_branch_per_feature(workspace, perturbed):
    model, formatter = perturbed
    data = tasks_and_records(workspace, "alpha", "beta")
    saved = model.gate.W_B.detach().clone()
    try:
        with torch.no_grad():
            model.gate.W_B.zero_()  # g = 0.5 everywhere
        even = inspect_gate(model, formatter, data)
        with torch.no_grad():
            model.gate.W_B.copy_(saved * 1e4)  # logits far from 0: each g near 0 or 1
        decided = inspect_gate(model, formatter, data)
    finally:
        with torch.no_grad():
            model.gate.W_B.copy_(saved)
    for report in even:
        assert report.decisiveness == pytest.approx(0.0, abs=1e-6)
        assert report.frozen_weight == pytest.approx(0.5, abs=1e-6)
        assert report.specificity == pytest.approx(0.0, abs=1e-6)
        assert report.gold_nll["gate"] == pytest.approx(report.gold_nll["half"], abs=1e-6)
    assert all(report.decisiveness > 0.95 for report in decided)
    assert all(report.specificity > 0 for report in decided)


def test_the_initial_gate_is_the_runs_own(workspace, tmp_path):
    # A gate learning rate near zero leaves the gate where it started, so the rebuilt initial
    # gate must equal the trained one; a higher one must show as movement.
    still = trained_run(workspace, tmp_path / "still", gate_learning_rate=1e-12)
    moving = trained_run(workspace, tmp_path / "moving", gate_learning_rate=0.5)
    base, tokenizer = load_model_and_tokenizer(str(workspace / "model"), "fp32", "cpu")
    formatter = PromptFormatter.for_tokenizer(tokenizer, "auto")
    data = tasks_and_records(workspace, "alpha")
    moved = {}
    for run in (still, moving):
        initial = initial_gate(run, copy.deepcopy(base))
        model = IMSMModel.from_pretrained(copy.deepcopy(base), run).eval()
        if run is still:
            assert torch.allclose(initial.W_A, model.gate.W_A, atol=1e-8)
            assert torch.allclose(initial.W_B, model.gate.W_B, atol=1e-8)
        (report,) = inspect_gate(model, formatter, data, initial)
        moved[run.name] = report.moved
        if run is still:
            assert report.initial_decisiveness == pytest.approx(report.decisiveness, abs=1e-6)
    assert moved["still"] < 1e-6 < 1e-3 < moved["moving"]
    assert "NLL initial" in format_report([report])


def test_a_run_without_its_train_config_has_no_initial_gate(workspace, tmp_path):
    base, _ = load_model_and_tokenizer(str(workspace / "model"), "fp32", "cpu")
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    model.save_pretrained(tmp_path / "adapter")
    assert initial_gate(tmp_path / "adapter", base) is None


def test_an_adapter_without_a_gate_is_refused_in_one_line(workspace, perturbed, tmp_path, capsys):
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig(fusion="none"))
    model.save_pretrained(tmp_path / "vanilla")
    argv = ["inspect-gate", "--model", str(workspace / "model"), "--adapter", str(tmp_path / "vanilla")]
    assert main([*argv, "--task", str(workspace / "alpha.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no IMSM gate" in err
    with pytest.raises(IMSMError, match="no gate"):
        inspect_gate(IMSMModel.from_pretrained(tiny_model("llama"), tmp_path / "vanilla"), perturbed[1], {})


def test_the_command_prints_a_table_and_writes_json(workspace, tmp_path, capsys):
    run = trained_run(workspace, tmp_path / "run", gate_learning_rate=1e-3)
    output = tmp_path / "gate.json"
    tasks = f"{workspace / 'alpha.yaml'},{workspace / 'beta.yaml'}"
    argv = ["inspect-gate", "--model", str(workspace / "model"), "--dtype", "fp32", "--adapter", str(run)]
    assert main([*argv, "--task", tasks, "--output", str(output)]) == 0
    table = capsys.readouterr().out
    assert "| alpha |" in table and "| beta |" in table and "NLL tuned only" in table
    written = json.loads(output.read_text())
    assert [row["task"] for row in written["tasks"]] == ["alpha", "beta"]
    assert written["tasks"][0]["moved"] is not None and not list(tmp_path.glob(".*tmp*"))
