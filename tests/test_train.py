"""Training: it learns, it writes a complete run directory, it resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import save_tiny_model
from imsm import IMSMError
from imsm.train.checkpoint import latest_checkpoint
from imsm.train.config import TrainConfig
from imsm.train.loop import TrainingDiverged, TrainingHooks
from imsm.train.optimization import adalora_orthogonal_penalty, build_optimizer, learning_rate_lambda
from imsm.train.run import train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    save_tiny_model(root / "model")
    rows = [{"q": f"w{3 + i} w{10 + i} w{20 + i}", "a": f"w{30 + i % 3}"} for i in range(12)]
    (root / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "probe.yaml").write_text(
        "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n"
    )
    same = [{"q": f"w{3 + i} w{10 + i}", "a": "w40 w41"} for i in range(8)]
    (root / "same.jsonl").write_text("".join(json.dumps(r) + "\n" for r in same))
    (root / "same.yaml").write_text("name: same\ndata: same.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n")
    return root


def config(workspace, output, **overrides):
    values = dict(
        task=str(workspace / "probe.yaml"),
        output=str(output),
        model=str(workspace / "model"),
        batch_size=4,
        micro_batch_size=2,
        epochs=2,
        learning_rate=1e-2,
        dtype="fp32",
    )
    return TrainConfig(**{**values, **overrides})


def adapter_tensors(directory):
    tensors = load_file(directory / "adapter_model.safetensors")
    gate = directory / "imsm_gate.safetensors"
    return {**tensors, **(load_file(gate) if gate.exists() else {})}


@pytest.mark.parametrize("method", ["lora", "dora", "adalora", "ia3"])
def test_every_method_learns_a_constant_answer(workspace, tmp_path, method):
    cfg = config(
        workspace,
        tmp_path / "run",
        task=str(workspace / "same.yaml"),
        peft=method,
        epochs=8,
        learning_rate=5e-2 if method != "ia3" else 2e-1,
        batch_size=4,
        micro_batch_size=4,
        schedule="constant",
    )
    summary = train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == summary["steps"] == 16
    assert max(losses[-3:]) < 0.85 * losses[0], losses  # tiny random models learn slowly, but surely


def test_run_directory_records_how_it_was_made(workspace, tmp_path):
    steps = []
    hooks = TrainingHooks(on_step=lambda step, result, seconds: steps.append((step, result, seconds)))
    summary = train(config(workspace, tmp_path / "run"), progress=False, hooks=hooks)
    run = tmp_path / "run"
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "imsm_config.json",
        "imsm_gate.safetensors",
        "train_config.json",
        "train_summary.json",
        "metrics.jsonl",
    } <= {p.name for p in run.iterdir()}
    made = json.loads((run / "train_config.json").read_text())
    assert made["seed"] == 0 and made["config"]["peft"] == "lora" and made["versions"]["peft"]
    assert made["resolved"]["total_steps"] == 6 and made["resolved"]["trainable_parameters"] > 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(record)
    assert len(list((run / "checkpoints").iterdir())) <= 2
    # The hooks see every `train_step` the log records (what `imsm bench train` times).
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _, _ in steps] == [r["step"] for r in logged] == list(range(1, 7))
    assert [round(result.loss, 6) for _, result, _ in steps] == [r["loss"] for r in logged]
    assert sum(result.tokens for _, result, _ in steps) == summary["tokens"]
    assert all(seconds > 0 for _, _, seconds in steps)


def test_same_seed_same_weights_and_other_seed_other_weights(workspace, tmp_path):
    train(config(workspace, tmp_path / "a"), progress=False)
    train(config(workspace, tmp_path / "b"), progress=False)
    train(config(workspace, tmp_path / "c", seed=1), progress=False)
    a, b, c = (adapter_tensors(tmp_path / name) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_an_interruption_ends_with_the_same_weights(workspace, tmp_path):
    train(config(workspace, tmp_path / "full", epochs=3), progress=False)

    def interrupt_after_step_4(step, result, seconds):  # called once step 4 is checkpointed
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cut = config(workspace, tmp_path / "cut", epochs=3, checkpoint_every=2)
        train(cut, progress=False, hooks=TrainingHooks(on_step=interrupt_after_step_4))
    assert latest_checkpoint(tmp_path / "cut").name == "step-000004"
    assert not (tmp_path / "cut" / "train_summary.json").exists()
    train(config(workspace, tmp_path / "cut", epochs=3, checkpoint_every=2, resume=True), progress=False)
    full, resumed = adapter_tensors(tmp_path / "full"), adapter_tensors(tmp_path / "cut")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_resuming_a_finished_run_touches_nothing_and_succeeds(workspace, tmp_path, capsys):
    from imsm.cli import main

    run = tmp_path / "run"
    summary = train(config(workspace, run), progress=False)

    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*")) if p.is_file()}

    before = snapshot()
    assert train(config(workspace, run, resume=True), progress=False) == {**summary, "already_complete": True}
    command = [
        "train", "--task", str(workspace / "probe.yaml"), "--model", str(workspace / "model"), "--output", str(run),
        "--batch-size", "4", "--micro-batch-size", "2", "--epochs", "2", "--learning-rate", "0.01",
        "--dtype", "fp32", "--resume",
    ]  # fmt: skip
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "holds a finished run (6 steps); nothing to resume" in printed and "trained" not in printed
    assert snapshot() == before
    # Other settings are still refused: the finished run is not the run asked for.
    with pytest.raises(IMSMError, match="other settings"):
        train(config(workspace, run, resume=True, learning_rate=5e-3), progress=False)


def test_a_crash_between_the_last_checkpoint_and_the_summary_resumes_to_the_end(workspace, tmp_path):
    run = tmp_path / "run"
    train(config(workspace, run), progress=False)
    adapter = adapter_tensors(run)
    for name in ("train_summary.json", "adapter_model.safetensors", "imsm_gate.safetensors"):
        (run / name).unlink()
    summary = train(config(workspace, run, resume=True), progress=False)
    assert summary["steps"] == 6 and (run / "train_summary.json").exists()
    resumed = adapter_tensors(run)
    assert adapter.keys() == resumed.keys() and all(torch.equal(adapter[k], resumed[k]) for k in adapter)


@pytest.mark.slow
def test_resume_after_sigkill_of_a_real_training_process(workspace, tmp_path):
    common = [
        "--task",
        str(workspace / "probe.yaml"),
        "--model",
        str(workspace / "model"),
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        # Long enough that the run cannot finish between the poll that sees the checkpoint and
        # the kill (on a fast machine 18 steps once did): over 100 steps stay after it.
        "--epochs",
        "40",
        "--learning-rate",
        "0.01",
        "--dtype",
        "fp32",
    ]
    command = [sys.executable, "-m", "imsm", "train", *common]
    subprocess.run([*command, "--output", str(tmp_path / "full")], check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, "--output", str(killed), "--checkpoint-every", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def past_step_5() -> bool:
        # Any checkpoint from step 5 on: older ones are pruned as newer ones land, so on a fast machine
        # a poll can miss step-000005 itself (it once did, and the run then finished unkilled).
        return any(path.name >= "step-000005" for path in (killed / "checkpoints").glob("step-??????"))

    deadline = time.time() + 240
    while time.time() < deadline and not past_step_5():
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "train_summary.json").exists(), "the run finished before it could be killed"
    result = subprocess.run(
        [*command, "--output", str(killed), "--checkpoint-every", "1", "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    full, resumed = adapter_tensors(tmp_path / "full"), adapter_tensors(killed)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(workspace, tmp_path):
    built = {}

    def poison_after_step_2(step, result, seconds):  # step 2 is checkpointed; step 3 will diverge
        if step == 2:
            with torch.no_grad():
                for parameter in built["model"].parameters():
                    if parameter.requires_grad:
                        parameter.fill_(float("nan"))

    hooks = TrainingHooks(on_start=lambda model: built.update(model=model), on_step=poison_after_step_2)
    with pytest.raises(TrainingDiverged, match="the loss became nan at step 3 \\(epoch 1\\); the last good checkpoint"):
        train(config(workspace, tmp_path / "run", peft="adalora", checkpoint_every=1), progress=False, hooks=hooks)
    assert latest_checkpoint(tmp_path / "run").name == "step-000002"
    assert not (tmp_path / "run" / "train_summary.json").exists()


def test_adalora_allocates_rank_and_is_regularised(workspace, tmp_path):
    from imsm import IMSMModel
    from imsm.model.load import load_model_and_tokenizer

    train(config(workspace, tmp_path / "run", peft="adalora", epochs=3), progress=False)
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert saved["total_step"] == 9 and saved["peft_type"] == "ADALORA"
    base, _ = load_model_and_tokenizer(str(workspace / "model"), "fp32")
    model = IMSMModel.from_pretrained(base, tmp_path / "run")
    assert float(adalora_orthogonal_penalty(model)) > 0


def test_ia3_trains_with_adafactor_at_a_fixed_learning_rate():
    from transformers.optimization import Adafactor

    from conftest import peft_config, tiny_model
    from imsm import IMSMConfig, get_imsm_model

    model = get_imsm_model(tiny_model("llama"), peft_config("ia3", "llama"), IMSMConfig())
    optimizer = build_optimizer(model, "adafactor", 3e-3, 1e-3, 0.0)
    assert isinstance(optimizer, Adafactor) and not optimizer.defaults["relative_step"]
    assert [group["lr"] for group in optimizer.param_groups] == [3e-3, 1e-3]


def test_schedules_warm_up_then_decay():
    cosine = learning_rate_lambda("cosine", warmup_steps=2, total_steps=10)
    assert [round(cosine(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    linear = learning_rate_lambda("linear", warmup_steps=0, total_steps=4)
    assert [linear(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"peft": "lorra"}, "did you mean 'lora'"),
        ({"fusion": "gated"}, "unknown fusion mode"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"learning_rate": 0.0}, "learning_rate must be greater than 0"),
        ({"learning_rate": -1e-4}, "learning_rate must be greater than 0"),
        ({"max_length": 4}, "longer than max_length=4"),
        ({"batch_size": 6, "micro_batch_size": 4}, "not a multiple of micro_batch_size"),
    ],
)
def test_bad_settings_are_refused_before_training(workspace, tmp_path, overrides, message):
    with pytest.raises(IMSMError, match=message):
        train(config(workspace, tmp_path / "run", **overrides), progress=False)
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_finished_runs_are_not_clobbered_and_resume_needs_a_matching_checkpoint(workspace, tmp_path):
    run = tmp_path / "run"
    train(config(workspace, run), progress=False)
    before = (run / "adapter_model.safetensors").read_bytes()
    with pytest.raises(IMSMError, match="already holds a finished run; pass --overwrite"):
        train(config(workspace, run), progress=False)
    assert (run / "adapter_model.safetensors").read_bytes() == before
    with pytest.raises(IMSMError, match="no checkpoint to resume from"):
        train(config(workspace, tmp_path / "empty", resume=True), progress=False)
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    train(config(workspace, tmp_path / "donor", checkpoint_every=1, epochs=1), progress=False)
    for item in (tmp_path / "donor").iterdir():
        if item.name in ("checkpoints", "train_config.json"):
            os.replace(item, cut / item.name)
    with pytest.raises(IMSMError, match="other settings"):
        train(config(workspace, cut, epochs=1, resume=True, learning_rate=5e-3), progress=False)
    train(config(workspace, run, overwrite=True, seed=3), progress=False)
    assert (run / "adapter_model.safetensors").read_bytes() != before


def test_train_cli_with_a_yaml_config(workspace, tmp_path, capsys):
    from imsm.cli import main

    settings = tmp_path / "train.yaml"
    settings.write_text(
        f"task: {workspace / 'probe.yaml'}\nmodel: {workspace / 'model'}\noutput: {tmp_path / 'run'}\n"
        "batch-size: 4\nmicro_batch_size: 2\nepochs: 1\ndtype: fp32\nfusion: none\n"
    )
    assert main(["train", "--config", str(settings), "--learning-rate", "0.005"]) == 0
    made = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert made["config"]["learning_rate"] == 0.005 and made["config"]["fusion"] == "none"
    assert not (tmp_path / "run" / "imsm_gate.safetensors").exists()
    assert main(["train", "--config", str(settings)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(workspace, tmp_path):
    # Dropout off: two processes draw other dropout masks than one process does.
    options = [
        "-m",
        "imsm",
        "train",
        "--task",
        str(workspace / "probe.yaml"),
        "--model",
        str(workspace / "model"),
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--epochs",
        "2",
        "--learning-rate",
        "0.01",
        "--dtype",
        "fp32",
        "--gate-dropout",
        "0",
        "--peft-options",
        "lora_dropout=0",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    ddp = subprocess.run(
        [*torchrun, *options, "--output", str(tmp_path / "ddp")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    single = subprocess.run(
        [sys.executable, *options, "--output", str(tmp_path / "single")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    assert json.loads((tmp_path / "ddp" / "train_config.json").read_text())["resolved"]["processes"] == 2
    a, b = adapter_tensors(tmp_path / "ddp"), adapter_tensors(tmp_path / "single")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The frozen memories on disk: computed once, read back by resumed runs and by other runs on the
# same base model and examples, never by runs they do not fit.


SAFETENSORS_CUT = "incomplete metadata, file not fully covered"


def frozen_cache_files(directory):
    return sorted(p.name for p in directory.glob("*.safetensors")) if directory.is_dir() else []


def test_frozen_memories_are_stored_and_read_back_with_the_same_result(workspace, tmp_path):
    shared = tmp_path / "memories"
    first = train(config(workspace, tmp_path / "a", frozen_cache_dir=str(shared)), progress=False)
    assert first["frozen_cache_read"] is False and len(frozen_cache_files(shared)) == 1
    second = train(config(workspace, tmp_path / "b", frozen_cache_dir=str(shared), fusion="mean"), progress=False)
    third = train(config(workspace, tmp_path / "c", frozen_cache_dir=str(shared)), progress=False)
    assert second["frozen_cache_read"] is True and third["frozen_cache_read"] is True
    assert len(frozen_cache_files(shared)) == 1  # one base model, one set of examples: one file
    a, c = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)  # read back, the memories train to the same weights


def test_a_run_keeps_its_memories_until_it_finishes_and_a_resumption_reads_them(workspace, tmp_path):
    def interrupt_after_step_2(step, result, seconds):
        if step == 2:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        hooks = TrainingHooks(on_step=interrupt_after_step_2)
        train(config(workspace, run, checkpoint_every=1), progress=False, hooks=hooks)
    assert len(frozen_cache_files(run / "frozen-memories")) == 1
    resumed = train(config(workspace, run, checkpoint_every=1, resume=True), progress=False)
    assert resumed["frozen_cache_read"] is True
    assert not (run / "frozen-memories").exists()  # finished: nothing left to resume
    vanilla = train(config(workspace, tmp_path / "vanilla", fusion="none"), progress=False)
    assert vanilla["frozen_cache_read"] is False and not (tmp_path / "vanilla" / "frozen-memories").exists()


def test_a_cache_that_cannot_be_written_is_noted_and_training_goes_on(workspace, tmp_path, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    capsys.readouterr()
    summary = train(config(workspace, tmp_path / "run", frozen_cache_dir=str(blocked)), progress=False)
    assert summary["steps"] == 6 and summary["frozen_cache_read"] is False
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsm: could not keep")]
    assert len(notes) == 1 and str(blocked) in notes[0] and notes[0].endswith("training goes on")


def test_the_fingerprint_sees_one_changed_weight_and_a_changed_setting_but_not_the_adapter():
    from conftest import peft_config, perturb_adapter, tiny_model
    from imsm import get_imsm_model
    from imsm.train.examples import TokenizedSet, TrainExample
    from imsm.train.frozen_cache import cache_fingerprint

    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"))
    data = TokenizedSet([TrainExample([3, 4, 5, 6], 2)], truncated=0, dropped=0)

    def fingerprint():
        return cache_fingerprint(model, data, pad_id=0, batch_size=8, device="cpu")

    before = fingerprint()
    perturb_adapter(model)  # the tuned branch only
    model.config.use_cache = not model.config.use_cache  # as activation checkpointing does: same numbers
    assert fingerprint() == before
    model.config.rms_norm_eps *= 10  # a constant of the architecture, not a weight
    assert fingerprint() != before
    model.config.rms_norm_eps /= 10
    assert fingerprint() == before
    with torch.no_grad():
        model.causal_lm.get_input_embeddings().weight[7, 3] += 1e-3  # one value of one row
    assert fingerprint() != before


def test_the_weight_checksums_do_not_depend_on_how_many_threads_sum_them():
    # A weight large enough for the reduction to be split across threads: float sums changed in
    # their last bits with the thread count, and the same model got another cache key.
    from imsm.train.frozen_cache import weight_checksums

    weight = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        readings = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            readings.append(weight_checksums(weight))
    finally:
        torch.set_num_threads(threads)
    assert readings[0] == readings[1] == readings[2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8])
def test_the_weight_checksums_see_one_flipped_bit_and_two_swapped_values(dtype):
    from imsm.train.frozen_cache import weight_checksums

    weight = (torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 50).to(dtype)
    before = weight_checksums(weight)
    assert weight_checksums(weight.clone()) == before
    flipped = weight.clone()
    words = flipped.view(torch.uint8)
    words[5_001] ^= 1  # the lowest bit of one byte: a change no float checksum need see
    assert weight_checksums(flipped) != before
    swapped = weight.clone()
    swapped[[10, 20]] = weight[[20, 10]]  # same values, other places
    assert weight[10] != weight[20] and weight_checksums(swapped) != before


@pytest.mark.parametrize("method", ["ia3", "dora", "vera"])
def test_every_peft_method_over_one_base_model_shares_its_memories(method):
    # The frozen branch runs on the base weights alone, however peft wraps them (LoRA wraps
    # q_proj as `q_proj.base_layer`, (IA)3 others), so the memories of one are the memories of all.
    from peft import LoraConfig

    from conftest import peft_config, tiny_model
    from imsm import get_imsm_model
    from imsm.train.examples import TokenizedSet, TrainExample
    from imsm.train.frozen_cache import cache_fingerprint

    data = TokenizedSet([TrainExample([3, 4, 5, 6], 2)], truncated=0, dropped=0)

    def fingerprint(model):
        return cache_fingerprint(model, data, pad_id=0, batch_size=8, device="cpu")

    # LoRA on q_proj and v_proj, as the studies train it; the others on every attention and MLP output layer.
    lora = get_imsm_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    other = get_imsm_model(tiny_model("llama"), peft_config(method, "llama"))
    assert fingerprint(other) == fingerprint(lora)
    with torch.no_grad():  # but not over another base model
        other.causal_lm.model.layers[1].mlp.down_proj.base_layer.weight[0, 0] += 1e-3
    assert fingerprint(other) != fingerprint(lora)


def test_a_base_weight_is_named_as_the_base_model_names_it():
    from imsm.train.frozen_cache import base_weight_name

    plain = "model.layers.0.self_attn.q_proj.weight"
    assert base_weight_name("peft_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == plain
    assert base_weight_name("peft_model.model.layers.0.self_attn.q_proj.weight") == plain  # no adapter
    assert base_weight_name("peft_model.base_model.model.lm_head.original_module.weight") == "lm_head.weight"


def test_memories_of_other_examples_or_another_base_model_are_not_read(workspace, tmp_path):
    shared = str(tmp_path / "memories")
    train(config(workspace, tmp_path / "a", frozen_cache_dir=shared), progress=False)
    other_task = train(
        config(workspace, tmp_path / "b", frozen_cache_dir=shared, task=str(workspace / "same.yaml")), progress=False
    )
    save_tiny_model(tmp_path / "other-model", seed=5)
    other_model = train(
        config(workspace, tmp_path / "c", frozen_cache_dir=shared, model=str(tmp_path / "other-model")), progress=False
    )
    assert other_task["frozen_cache_read"] is False and other_model["frozen_cache_read"] is False
    assert len(frozen_cache_files(tmp_path / "memories")) == 3


def test_a_damaged_memory_file_is_rebuilt_with_a_note(workspace, tmp_path, capsys):
    shared = tmp_path / "memories"
    train(config(workspace, tmp_path / "a", frozen_cache_dir=str(shared)), progress=False)
    [name] = frozen_cache_files(shared)
    intact = (shared / name).read_bytes()
    (shared / name).write_bytes(intact[: len(intact) // 2])
    capsys.readouterr()
    summary = train(config(workspace, tmp_path / "b", frozen_cache_dir=str(shared)), progress=False)
    assert summary["frozen_cache_read"] is False
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsm: ")]
    assert note == [f"imsm: {shared / name} is cut short or not a safetensors file ({SAFETENSORS_CUT}); it is rebuilt"]
    assert (shared / name).read_bytes() == intact
