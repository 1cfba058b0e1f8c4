"""`IMSMTrainer` (transformers' Trainer for an IMSMModel) and the TRL recipe, on tiny random models.

The spec: the fused loss falls; checkpoints are saved adapter directories plus training state,
with no pickle and no base weight; resuming ends where an uninterrupted run ends; the best
checkpoint is loaded at the end; gradient checkpointing leaves every gradient as it was and a
reentrant one is refused; the gate has its own learning rate; TRL's trainers are refused, and
TRL's data preparation carries over.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from transformers import TrainingArguments
from transformers.utils import ModelOutput

from conftest import (
    EOS,
    VOCAB,
    deep_model,
    layers_adapter_config,
    peft_config,
    perturb_adapter,
    random_batch,
    seeded_generator,
    tiny_model,
    tiny_tokenizer,
)
from imsm import IMSMConfig, IMSMError, IMSMModel, IMSMTrainer, get_imsm_model
from imsm.model.siamese import IGNORE_INDEX
from imsm.train.config import AUTHORS_GATE_LEARNING_RATE
from imsm.train.optimization import adalora_tuner
from imsm.train.trainer import IMSMDataCollator

SAVED_ADAPTER = [
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "imsm_config.json",
    "imsm_gate.safetensors",
]
TRAINING_STATE = [
    "optimizer.json",
    "optimizer.safetensors",
    "rng_state.json",
    "rng_state.safetensors",
    "scheduler.json",
    "trainer_state.json",
    "training_args.json",
]


def build(seed: int = 0) -> IMSMModel:
    """IMSM-LoRA on the tiny Llama; `seed` draws the adapter and gate (the base is always the same).
    Dropout in the adapter and the gate, so resuming must restore the random generators too."""
    base = tiny_model("llama")
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
    return get_imsm_model(base, lora, IMSMConfig(fusion="imsm"))


def rows(count: int = 8, seed: int = 3) -> list[dict[str, list[int]]]:
    """Prompts of 4-6 random tokens, each answered by the same three tokens and EOS: learnable in
    a few steps. The prompt is labelled -100, so it is the query."""
    generator = seeded_generator(seed)
    answer = [7, 8, 9, EOS]
    data = []
    for index in range(count):
        prompt = torch.randint(3, VOCAB, (4 + index % 3,), generator=generator).tolist()
        data.append({"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer})
    return data


def arguments(output: Path, **overrides) -> TrainingArguments:
    """6 steps of 2 examples (4 steps an epoch, so step 3 is mid-epoch), a checkpoint every 3."""
    settings = {
        "per_device_train_batch_size": 2,
        "learning_rate": 2e-2,
        "max_steps": 6,
        "save_steps": 3,
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    return TrainingArguments(output_dir=str(output), **{**settings, **overrides})


def trained_tensors(model: IMSMModel) -> dict[str, torch.Tensor]:
    """The adapter's and the gate's tensors, by name (trainable or loaded)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if model.parameter_group(n) != "base"}


def test_forward_returns_a_model_output():
    model = build().eval()
    ids, mask = random_batch()
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX
    out = model(ids, attention_mask=mask, labels=labels)
    assert isinstance(out, ModelOutput)
    assert out[0] is out.loss is out["loss"]  # what Trainer.compute_loss reads
    assert out["logits"] is out.logits
    without_labels = model(ids, attention_mask=mask)
    assert "loss" not in without_labels and without_labels[0] is without_labels.logits


def test_training_writes_checkpoints_that_load_as_saved_adapters(tmp_path):
    model = build()
    run = tmp_path / "run"
    args = arguments(
        run, max_steps=24, save_steps=12, learning_rate=5e-2, lr_scheduler_type="constant", gradient_checkpointing=True
    )
    trainer = IMSMTrainer(model, args, train_dataset=rows())
    trainer.train()

    assert model.is_activation_checkpointing
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 24 and max(losses[-3:]) < 0.85 * losses[0], losses  # tiny random models learn slowly
    checkpoint = run / "checkpoint-24"
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(SAVED_ADAPTER + TRAINING_STATE)
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]  # no pickle anywhere

    loaded = IMSMModel.from_pretrained(tiny_model("llama"), str(checkpoint))
    ids, mask = random_batch()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_resuming_a_checkpoint_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    data = rows()
    whole = build(seed=0)
    IMSMTrainer(whole, arguments(tmp_path / "whole"), train_dataset=data).train()

    resumed = build(seed=1)  # another initialisation: the adapter, gate and state must come from the checkpoint
    trainer = IMSMTrainer(resumed, arguments(tmp_path / "resumed"), train_dataset=data)
    trainer.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-3"))

    assert trainer.state.global_step == 6
    expected, found = trained_tensors(whole), trained_tensors(resumed)
    assert expected.keys() == found.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(found[name], tensor, msg=name)


def test_the_best_checkpoint_is_loaded_at_the_end(tmp_path):
    data = rows()
    model = build()
    args = arguments(
        tmp_path / "run",
        eval_strategy="steps",
        eval_steps=1,
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,  # the highest loss: an early checkpoint, so "best" is not simply the last one
    )
    trainer = IMSMTrainer(model, args, train_dataset=data, eval_dataset=data[:4])
    trainer.train()

    best = Path(trainer.state.best_model_checkpoint)
    assert best.name != "checkpoint-6"
    expected = trained_tensors(IMSMModel.from_pretrained(tiny_model("llama"), str(best)))
    found = trained_tensors(model)
    last = trained_tensors(IMSMModel.from_pretrained(tiny_model("llama"), str(tmp_path / "run" / "checkpoint-6")))
    assert any(not torch.equal(last[name], found[name]) for name in found)
    for name, tensor in expected.items():
        torch.testing.assert_close(found[name], tensor, msg=name)


def _gradients(model: IMSMModel) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    ids, mask = random_batch(padding="right")
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :4] = IGNORE_INDEX
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = [name for name, p in trainable.items() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    return {name: p.grad.clone() for name, p in trainable.items()}


def test_gradient_checkpointing_leaves_the_adapter_and_gate_gradients_as_they_were():
    # The adapter sits on layers 2-3 only, so the tuned branch starts at layer 2 from the frozen
    # branch's no-grad states: the case a reentrant checkpoint breaks.
    model = get_imsm_model(deep_model("llama"), layers_adapter_config("lora", "llama"), IMSMConfig(gate_dropout=0.0))
    perturb_adapter(model)  # the branches differ, so the gate's gradient is not zero
    model.train()
    assert model.shared_layer_count() == 2

    reference = _gradients(model)
    model.gradient_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed = _gradients(model)

    assert any("lora_" in name for name in reference) and any(name.startswith("gate.") for name in reference)
    for name, gradient in reference.items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], gradient, msg=name)


def test_reentrant_gradient_checkpointing_is_refused(tmp_path):
    model = build()
    with pytest.raises(IMSMError, match="use_reentrant"):
        model.gradient_checkpointing_enable({"use_reentrant": True})
    assert not model.is_activation_checkpointing
    args = arguments(tmp_path, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(IMSMError, match="use_reentrant"):
        IMSMTrainer(model, args, train_dataset=rows())


def test_the_gate_trains_at_its_own_learning_rate(tmp_path):
    model = build()
    args = arguments(tmp_path, learning_rate=1e-4, weight_decay=0.01)
    trainer = IMSMTrainer(model, args, train_dataset=rows(), gate_learning_rate=5e-3)
    groups = trainer.create_optimizer().param_groups

    gate = {id(model.gate.W_A), id(model.gate.W_B)}
    with_gate = [group for group in groups if gate & {id(p) for p in group["params"]}]
    assert len(with_gate) == 1 and {id(p) for p in with_gate[0]["params"]} == gate
    assert with_gate[0]["lr"] == 5e-3 and with_gate[0]["weight_decay"] == 0.01
    others = [group for group in groups if group is not with_gate[0]]
    assert others and all(group["lr"] == 1e-4 for group in others)
    assert sum(len(group["params"]) for group in groups) == sum(p.requires_grad for p in model.parameters())

    default = IMSMTrainer(build(), args, train_dataset=rows()).create_optimizer().param_groups
    assert sorted(group["lr"] for group in default)[-1] == AUTHORS_GATE_LEARNING_RATE
    shared = IMSMTrainer(build(), args, train_dataset=rows(), gate_learning_rate=None).create_optimizer()
    assert all(group["lr"] == 1e-4 for group in shared.param_groups)


@pytest.mark.parametrize("container", ["list", "datasets"])
def test_batches_keep_labels_and_attention_mask_padded(tmp_path, container):
    data = [{**row, "source": "not a model input"} for row in rows()]
    if container == "datasets":
        data = pytest.importorskip("datasets").Dataset.from_list(data)
    trainer = IMSMTrainer(build(), arguments(tmp_path), train_dataset=data)
    batch = next(iter(trainer.get_train_dataloader()))

    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    padding = batch["attention_mask"] == 0
    assert padding.any()  # the rows differ in length
    assert (batch["labels"][padding] == IGNORE_INDEX).all() and (batch["input_ids"][padding] == 0).all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) == 4).all()  # the answer and EOS, in every row


def test_the_collator_refuses_misaligned_rows():
    with pytest.raises(IMSMError, match="labels has 2 entries but input_ids has 3"):
        IMSMDataCollator(0)([{"input_ids": [3, 4, 5], "labels": [4, 5]}])


@pytest.mark.parametrize("problem", ["pickled optimizer", "no trainer state"])
def test_checkpoints_that_are_not_imsm_checkpoints_are_refused(tmp_path, problem):
    IMSMTrainer(build(), arguments(tmp_path / "run", max_steps=3), train_dataset=rows()).train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    if problem == "pickled optimizer":  # what transformers' Trainer writes; never to be unpickled
        (checkpoint / "optimizer.safetensors").unlink()
        (checkpoint / "optimizer.pt").write_bytes(b"unpickling this would fail differently")
        expected = "optimizer.pt, a pickle"
    else:  # a run stopped while writing the checkpoint
        (checkpoint / "trainer_state.json").unlink()
        expected = "trainer_state.json"
    trainer = IMSMTrainer(build(), arguments(tmp_path / "again"), train_dataset=rows())
    with pytest.raises(IMSMError, match=expected):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_adalora_allocates_its_ranks_under_the_trainer(tmp_path):
    model = get_imsm_model(tiny_model("llama"), peft_config("adalora", "llama"), IMSMConfig())
    IMSMTrainer(model, arguments(tmp_path, max_steps=2), train_dataset=rows()).train()
    assert adalora_tuner(model).rankallocator.ipt  # importance scores, accumulated after each step


# ---------------------------------------------------------------------------------------------
# TRL: its trainers are refused; its data preparation carries over (`imsm.trl.sft_dataset`).

CHAT_TEMPLATE = (
    "{% for message in messages %}<s> {{ message['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> {% endif %}"
)


@pytest.mark.parametrize("collator", ["TRL's", "given"])
def test_trl_sft_trainer_refuses_an_imsm_model(tmp_path, collator):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    data = Dataset.from_list([{"prompt": "w3 w4 w5", "completion": " w6 w7"}] * 4)
    given = {"data_collator": IMSMDataCollator(0)} if collator == "given" else {}
    config = trl.SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    with pytest.raises(IMSMError, match=r"imsm\.IMSMTrainer"):
        trl.SFTTrainer(model=build(), args=config, train_dataset=data, processing_class=tiny_tokenizer(), **given)


@pytest.mark.parametrize("conversational", [False, True])
def test_sft_dataset_prepares_rows_as_sft_trainer_does(tmp_path, conversational):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    import imsm
    from imsm.train.trl import sft_dataset
    from imsm.trl import sft_dataset as documented

    assert imsm.trl.sft_dataset is sft_dataset and documented is sft_dataset  # the documented names
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    prompts = ["w3 w4 w5", "w10 w11", "w20 w21 w22 w23 w24 w25", " ".join(f"w{i}" for i in range(30, 45))]
    answers = ["w6 w7", "w12", "w26 w27 w28 w29", "w50"]  # the last prompt fills max_length: dropped
    if conversational:
        data = [
            {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": a}]}
            for p, a in zip(prompts, answers, strict=True)
        ]
    else:
        data = [{"prompt": p, "completion": " " + a} for p, a in zip(prompts, answers, strict=True)]
    config = trl.SFTConfig(output_dir=str(tmp_path / "sft"), report_to=[], use_cpu=True, max_length=12)
    expected = trl.SFTTrainer(
        model=tiny_model("llama"), args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer
    ).train_dataset

    prepared = sft_dataset(data, tokenizer, max_length=12)
    assert prepared.column_names == ["input_ids", "labels"]
    assert len(prepared) == 3 and prepared["input_ids"] == expected["input_ids"]
    assert prepared["labels"] == expected["labels"]
    assert all(IGNORE_INDEX in labels for labels in prepared["labels"])  # a prompt (the query) in every row

    trainer = IMSMTrainer(build(), arguments(tmp_path / "imsm", max_steps=2), train_dataset=prepared)
    trainer.train()
    assert trainer.state.global_step == 2


def test_sft_dataset_refuses_rows_without_a_prompt():
    pytest.importorskip("trl")
    from imsm.train.trl import sft_dataset

    with pytest.raises(IMSMError, match="prompt-completion"):
        sft_dataset([{"text": "w3 w4 w5"}], tiny_tokenizer())
