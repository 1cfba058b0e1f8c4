"""Damaged files, as the command line meets them: one line naming the file, what is wrong with it and
the fix, exit code 2, no traceback, nothing written. Every file the project reads, every kind of
damage; where damage can be recovered from (a checkpoint with an intact older one, an evaluation
journal), the run goes on and says so in one line."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    DAMAGES,
    JSON_DAMAGES,
    damage,
    expected_problem,
    peft_config,
    perturb_adapter,
    save_tiny_model,
    tiny_model,
    tiny_tokenizer,
)
from imsm import IMSMConfig, IMSMError, IMSMModel, get_imsm_model
from imsm.checked_files import DamagedFile
from imsm.cli import main
from imsm.data import read_text_documents
from imsm.evaluation.run import evaluate_task
from imsm.experiment import runner
from imsm.experiment.spec import load_experiment
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task
from imsm.train.checkpoint import checkpoint_directories, newest_intact_checkpoint, read_checkpoint, save_checkpoint
from imsm.train.config import TrainConfig
from imsm.train.loop import TrainingHooks
from imsm.train.run import train

ADAPTER_FIX = "re-save the adapter (save_pretrained) or re-train it"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage")
    save_tiny_model(root / "model")
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    perturb_adapter(model)
    model.save_pretrained(root / "adapter")
    rows = [{"q": f"w{3 + i} w{10 + i} w{20 + i}", "a": f"w{30 + i % 3}"} for i in range(12)]
    (root / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "probe.yaml").write_text(
        "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n"
    )
    return root


def one_line_error(capsys, argv) -> str:
    """The CLI's one line on stderr for `argv`, after checking it is exactly that and exit code 2."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("imsm: error: "), captured.err
    return lines[0]


def snapshot(directory):
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Adapter directories and model directories.

ADAPTER_CASES = [
    *[(name, how) for name in ("adapter_model.safetensors", "imsm_gate.safetensors") for how in DAMAGES],
    *[(name, how) for name in ("adapter_config.json", "imsm_config.json") for how in JSON_DAMAGES],
]


@pytest.mark.parametrize(("name", "how"), ADAPTER_CASES)
def test_a_damaged_adapter_file_is_one_line_naming_it_and_the_fix(workspace, tmp_path, capsys, name, how):
    adapter = shutil.copytree(workspace / "adapter", tmp_path / "adapter")
    damage(adapter / name, how)
    before = snapshot(tmp_path)
    line = one_line_error(
        capsys, ["generate", "--model", workspace / "model", "--adapter", adapter, "--prompt", "w3 w4"]
    )
    assert f"{adapter / name} {expected_problem(adapter / name, how)}" in line and line.endswith(ADAPTER_FIX)
    with pytest.raises(DamagedFile, match=name):  # the Python API refuses it the same way
        IMSMModel.from_pretrained(tiny_model("llama"), str(adapter))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("name", "how"),
    [("model.safetensors", how) for how in ("truncated", "zero-filled", "wrong format")]
    + [("config.json", "truncated"), ("tokenizer.json", "zero-filled")],
)
def test_a_damaged_local_model_is_one_line_naming_it_and_the_fix(workspace, tmp_path, capsys, name, how):
    model = shutil.copytree(workspace / "model", tmp_path / "model")
    damage(model / name, how)
    line = one_line_error(capsys, ["generate", "--model", model, "--prompt", "w3 w4"])
    assert f"{model / name} {expected_problem(model / name, how)}" in line
    assert line.endswith("re-save or download the model again")


# ---------------------------------------------------------------------------------------------
# Checkpoints: each file, each damage; a damaged newest one falls back to the newest intact one.


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A run directory with one checkpoint (step 2) of a tiny model and its AdamW state."""
    output = tmp_path_factory.mktemp("checkpointed")
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(output, 2, dict(model.state_dict()), optimizer, scheduler, {"step": 2, "epoch": 0, "position": 2})
    return output, model, optimizer, scheduler


CHECKPOINT_CASES = [
    *[(name, how) for name in ("trainable.safetensors", "optimizer.safetensors") for how in DAMAGES],
    *[("rng.safetensors", how) for how in ("truncated", "zero-filled", "wrong format")],  # bytes: no NaN
    *[("state.json", how) for how in JSON_DAMAGES],
]


@pytest.mark.parametrize(("name", "how"), CHECKPOINT_CASES)
def test_every_damaged_checkpoint_file_is_named(checkpointed, tmp_path, name, how):
    run = shutil.copytree(checkpointed[0], tmp_path / "run")
    path = run / "checkpoints" / "step-000002"
    damage(path / name, how)
    with pytest.raises(DamagedFile, match=re.escape(f"{name} {expected_problem(path / name, how)}")):
        read_checkpoint(path)
    with pytest.raises(IMSMError, match=f"holds no intact checkpoint \\(step-000002: {name} "):
        newest_intact_checkpoint(run)


def test_a_damaged_checkpoint_is_removed_only_once_a_newer_intact_one_is_written(checkpointed, tmp_path):
    run = shutil.copytree(checkpointed[0], tmp_path / "run")
    _, model, optimizer, scheduler = checkpointed
    save_checkpoint(run, 4, dict(model.state_dict()), optimizer, scheduler, {"step": 4, "epoch": 0, "position": 4})
    damage(run / "checkpoints" / "step-000004" / "trainable.safetensors", "truncated")
    checkpoint, skipped = newest_intact_checkpoint(run)
    assert checkpoint.path.name == "step-000002" and skipped[0].startswith("step-000004: trainable.safetensors is cut")
    assert [p.name for p in checkpoint_directories(run)] == ["step-000002", "step-000004"]  # nothing deleted yet
    # Training goes on from step 2; its next checkpoint supersedes the damaged one, and step 2 stays.
    save_checkpoint(run, 3, dict(model.state_dict()), optimizer, scheduler, {"step": 3, "epoch": 0, "position": 3})
    assert [p.name for p in checkpoint_directories(run)] == ["step-000002", "step-000003"]


def training(workspace, output, **overrides):
    values = dict(
        task=str(workspace / "probe.yaml"), output=str(output), model=str(workspace / "model"), batch_size=4,
        micro_batch_size=2, epochs=2, learning_rate=1e-2, dtype="fp32", checkpoint_every=2,
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


TRAIN_FLAGS = [
    "--batch-size", "4", "--micro-batch-size", "2", "--epochs", "2", "--learning-rate", "0.01", "--dtype", "fp32",
    "--checkpoint-every", "2",
]  # fmt: skip


def train_command(workspace, output, *extra):
    return ["train", "--task", workspace / "probe.yaml", "--model", workspace / "model", "--output", output,
            *TRAIN_FLAGS, *extra]  # fmt: skip


def adapter_tensors(directory):
    return {**load_file(directory / "adapter_model.safetensors"), **load_file(directory / "imsm_gate.safetensors")}


def copy_run(source, destination):
    """A copy of a run directory that --resume accepts there (its recorded --output updated)."""
    shutil.copytree(source, destination)
    recorded = json.loads((destination / "train_config.json").read_text())
    recorded["config"]["output"] = str(destination)
    (destination / "train_config.json").write_text(json.dumps(recorded))
    return destination


def same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(workspace, tmp_path_factory):
    """A finished run, and the same run interrupted after step 4 (checkpoints at steps 3 and 4)."""
    root = tmp_path_factory.mktemp("runs")
    train(training(workspace, root / "full"), progress=False)

    def interrupt_after_step_4(step, result, seconds):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(training(workspace, root / "cut"), progress=False, hooks=TrainingHooks(on_step=interrupt_after_step_4))
    assert [p.name for p in checkpoint_directories(root / "cut")] == ["step-000003", "step-000004"]
    return root


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("trainable.safetensors", "truncated"),
        ("optimizer.safetensors", "nan"),
        ("state.json", "zero-filled"),
        ("rng.safetensors", "wrong format"),
    ],
)
def test_resume_falls_back_from_a_damaged_checkpoint_to_the_newest_intact_one(
    workspace, runs, tmp_path, capsys, name, how
):
    run = copy_run(runs / "cut", tmp_path / "run")
    damaged = run / "checkpoints" / "step-000004" / name
    damage(damaged, how)
    capsys.readouterr()
    train(training(workspace, run, resume=True), progress=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsm:")]
    assert len(notes) == 1, notes
    assert notes[0].startswith(
        f"imsm: --resume: skipping damaged checkpoint(s) (step-000004: {name} {expected_problem(damaged, how)}"
    )
    assert notes[0].endswith("); resuming from step-000003")
    assert same_tensors(adapter_tensors(runs / "full"), adapter_tensors(run))
    assert read_checkpoint(run / "checkpoints" / "step-000006")  # the damaged one is superseded


def test_resume_with_no_intact_checkpoint_is_one_line_and_touches_nothing(workspace, runs, tmp_path, capsys):
    run = copy_run(runs / "cut", tmp_path / "run")
    damage(run / "checkpoints" / "step-000003" / "optimizer.safetensors", "inf")
    damage(run / "checkpoints" / "step-000004" / "state.json", "truncated")
    before = snapshot(tmp_path)
    line = one_line_error(capsys, train_command(workspace, run, "--resume"))
    assert "holds no intact checkpoint (step-000004: state.json is cut short or not valid JSON" in line
    assert "step-000003: optimizer.safetensors holds non-finite values (NaN or inf)" in line
    assert line.endswith("train from the start: --overwrite instead of --resume (in an experiment, delete "
                         f"{run / 'checkpoints'})")  # fmt: skip
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("how", JSON_DAMAGES)
@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("train_summary.json", "delete it and resume the run (imsm train --resume, or the experiment again)"),
        ("train_config.json", "start the run afresh with --overwrite, or in another directory"),
    ],
)
def test_a_damaged_run_file_is_one_line_naming_it_and_the_fix(workspace, runs, tmp_path, capsys, name, fix, how):
    run = copy_run(runs / "full", tmp_path / "run")
    damage(run / name, how)
    before = snapshot(tmp_path)
    line = one_line_error(capsys, train_command(workspace, run, "--resume"))
    assert f"{run / name} {expected_problem(run / name, how)}" in line and fix in line
    assert snapshot(tmp_path) == before


def test_following_the_fix_for_a_damaged_summary_rewrites_it(workspace, runs, tmp_path):
    run = copy_run(runs / "full", tmp_path / "run")
    expected = json.loads((run / "train_summary.json").read_text())
    damage(run / "train_summary.json", "zero-filled")
    (run / "train_summary.json").unlink()
    assert main([str(arg) for arg in train_command(workspace, run, "--resume")]) == 0
    assert json.loads((run / "train_summary.json").read_text())["steps"] == expected["steps"]
    assert same_tensors(adapter_tensors(runs / "full"), adapter_tensors(run))


# ---------------------------------------------------------------------------------------------
# Experiment results: refused with the file to delete, never silently recomputed.


@pytest.mark.parametrize("how", JSON_DAMAGES)
@pytest.mark.parametrize("which", ["cell result", "original row", "settings"])
def test_a_damaged_experiment_result_is_refused_with_the_file_to_delete(workspace, tmp_path, capsys, which, how):
    config = {
        "name": "tiny", "results": str(tmp_path / "results"), "work": str(tmp_path / "work"),
        "model": str(workspace / "model"), "train": {"epochs": 1, "batch_size": 4, "dtype": "fp32"},
        "eval": {"limit": 4, "batch_size": 4}, "original": [str(workspace / "probe.yaml")],
        "grids": {"g": {"task": str(workspace / "probe.yaml")}},
    }  # fmt: skip
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(config))
    experiment = load_experiment(path)
    runner.check_results_directory(experiment)
    files = {
        "cell result": runner.cell_result_path(experiment, experiment.cells[0]),
        "original row": runner.original_path(experiment, str(workspace / "probe.yaml")),
        "settings": experiment.results / runner.SETTINGS,
    }
    for file in files.values():
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps({"metrics": {"probe": {"exact_match": 0.5}}}, indent=2))
    damage(files[which], how)
    before = snapshot(tmp_path)
    # --dry-run reads every cell's result; a run checks the settings, then the original row, first.
    line = one_line_error(capsys, ["experiment", path, *(["--dry-run"] if which == "cell result" else [])])
    assert f"{files[which]} {expected_problem(files[which], how)}" in line
    if which == "settings":
        assert line.endswith("restore it (e.g. from git), or delete it if every result there was made with the "
                             "current settings")  # fmt: skip
    else:
        assert line.endswith(f"delete {files[which]} to recompute it")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Task specs and data files.

NOT_UTF8 = b"\xff\xfe\x00w\x00"


@pytest.mark.parametrize(
    ("name", "how", "problem"),
    [
        ("probe.yaml", "zero-filled", "probe.yaml' cannot be parsed (unacceptable character #x0000"),
        ("probe.yaml", "not UTF-8", "probe.yaml' cannot be parsed ('utf-8' codec can't decode byte 0xff"),
        ("probe.yaml", "truncated", "probe.yaml' is missing answer, metrics"),
        ("probe.jsonl", "zero-filled", "probe.jsonl:1: NUL bytes (a zero-filled or binary file, not text)"),
        ("probe.jsonl", "truncated", "probe.jsonl:7: malformed JSON (Unterminated string"),
        ("probe.jsonl", "not UTF-8", "probe.jsonl:1: not UTF-8 text (byte 0)"),
    ],
)
def test_a_damaged_task_spec_or_data_file_is_one_line(workspace, tmp_path, capsys, name, how, problem):
    for file in ("probe.yaml", "probe.jsonl"):
        shutil.copy(workspace / file, tmp_path / file)
    if how == "not UTF-8":
        (tmp_path / name).write_bytes(NOT_UTF8 + (tmp_path / name).read_bytes())
    else:
        damage(tmp_path / name, how)
    before = snapshot(tmp_path)
    output = tmp_path / "out" / "results.json"
    line = one_line_error(
        capsys, ["eval", "--model", workspace / "model", "--task", tmp_path / "probe.yaml", "--output", output]
    )
    assert problem in line, line
    assert snapshot(tmp_path) == before and not output.parent.exists()


def test_a_zero_filled_text_document_is_refused_with_its_line(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_bytes(b"first document\n\nsecond" + bytes(64))
    with pytest.raises(IMSMError, match=r"docs.txt:3: NUL bytes \(a zero-filled or binary file, not text\)"):
        read_text_documents(path)


# ---------------------------------------------------------------------------------------------
# Evaluation journals: a cache of redoable work, so a damaged one is started afresh, with a note.


def evaluate_with_journal(workspace, journal):
    from imsm.data import load_examples

    task = get_task(str(workspace / "probe.yaml"))
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    perturb_adapter(model)
    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    return evaluate_task(
        model.eval(), formatter, task, load_examples(task, limit=6), "test", batch_size=2, max_new_tokens=3,
        progress=False, journal_path=journal, run_settings={"model": "tiny"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def journaled(workspace, tmp_path_factory):
    """An evaluation's results and the journal it left (as if the run died before removing it)."""
    journal = tmp_path_factory.mktemp("journal") / "run.probe.partial.jsonl"
    return evaluate_with_journal(workspace, journal), journal


@pytest.mark.parametrize("how", JSON_DAMAGES)
def test_a_journal_with_a_damaged_header_is_started_afresh_with_a_note(workspace, journaled, tmp_path, capsys, how):
    complete, original = journaled
    journal = tmp_path / original.name
    shutil.copy(original, journal)
    if how == "truncated":
        journal.write_bytes(journal.read_bytes()[:10])  # cut inside the header (a cut row is the next test's)
    else:
        damage(journal, how)
    capsys.readouterr()
    again = evaluate_with_journal(workspace, journal)
    assert capsys.readouterr().err.splitlines() == [
        f"imsm: the evaluation journal {journal} is damaged (no readable header); starting afresh"
    ]
    assert again.resumed_examples == 0 and again.examples == complete.examples


def test_damaged_journal_rows_are_evaluated_again_with_a_note(workspace, journaled, tmp_path, capsys):
    complete, original = journaled
    journal = tmp_path / original.name
    header, *rows = original.read_bytes().splitlines(keepends=True)
    rows[1] = bytes(len(rows[1]) - 1) + b"\n"  # a zero-filled stretch in the middle
    rows[3] = rows[3][:20] + b"\n"  # a row cut short, then more rows
    journal.write_bytes(header + b"".join(rows))
    capsys.readouterr()
    again = evaluate_with_journal(workspace, journal)
    assert capsys.readouterr().err.splitlines() == [
        f"imsm: 2 damaged lines of the evaluation journal {journal} are ignored; their examples are evaluated again"
    ]
    assert again.resumed_examples == 4 and again.examples == complete.examples
