"""IMSM-LoRA on a few MRPC examples with transformers' Trainer (`imsm.IMSMTrainer`).

    python examples/trainer_mrpc.py --data-dir ../shared/data --max-steps 5

The data goes through the project's own task, data and prompt code, exactly as `imsm train`
reads it (the MRPC task's prompt and answer, the tokenizer's chat template, EOS, labels on the
answer only); the training loop is transformers' Trainer. Checkpoints land in OUTPUT/checkpoint-N
as saved adapter directories plus the training state (safetensors and JSON, no pickles), so
`IMSMModel.from_pretrained(base_model, "OUTPUT/checkpoint-N")` loads one, and
`--resume` continues from the newest. A couple of minutes on a CPU with `--max-steps 5`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import TrainingArguments

from imsm import IMSMConfig, IMSMTrainer, get_imsm_model
from imsm.data import load_examples, resolve_data_dir
from imsm.model.load import load_model_and_tokenizer
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task
from imsm.train.examples import tokenize_examples
from imsm.train.trainer import labelled_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="directory holding mrpc/train.jsonl (e.g. ../shared/data)")
    parser.add_argument("--max-steps", type=int, default=5, help="optimizer steps")
    parser.add_argument("--limit", type=int, default=64, help="training examples read")
    parser.add_argument("--output", default="runs/trainer-mrpc", help="checkpoints and the final adapter")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    args = parser.parse_args()
    started = time.perf_counter()

    task = get_task("mrpc")
    records = load_examples(task, task.train_split, resolve_data_dir(args.data_dir), args.limit)
    base, tokenizer = load_model_and_tokenizer("smollm2-135m", "fp32")
    formatter = PromptFormatter.for_tokenizer(tokenizer)
    data = tokenize_examples(task, records, formatter, max_length=512)
    train_rows = labelled_rows(data.examples)  # the prompt labelled -100: the query of eq. 3

    torch.manual_seed(0)  # the adapter's and the gate's initialisation
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
    model = get_imsm_model(base, lora, IMSMConfig(fusion="imsm", gate_rank=8))
    model.print_trainable_parameters()

    training = TrainingArguments(
        output_dir=args.output,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        learning_rate=3e-4,  # the LoRA paper's; the gate trains at IMSMTrainer's gate_learning_rate (1e-3)
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_steps=max(1, args.max_steps // 2),
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = IMSMTrainer(model, training, train_dataset=train_rows, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model(args.output)  # the final adapter: the saved-directory format, never the base weights

    output = Path(args.output)
    seconds = time.perf_counter() - started
    print(f"{len(train_rows)} MRPC examples, {trainer.state.global_step} steps, {seconds:.0f} s")
    print(f"checkpoints: {', '.join(sorted(p.name for p in output.glob('checkpoint-*')))}")
    print(f"final adapter in {output}: {', '.join(sorted(p.name for p in output.glob('*.*')))}")


if __name__ == "__main__":
    main()
