"""What shared lower layers buy: decoding and a training step, sharing on against off, one run.

    python benchmarks/shared_layers_speed.py --model smollm2-135m --dtype fp32 --first-layer 15

LoRA r=16 on q_proj/v_proj of layers [first_layer, L) (so layers below are shared), and the same
LoRA on every layer as the reference where nothing can be shared. Decoding: greedy, EOS ignored,
chat-formatted prompts, --max-new-tokens per row. Training: forward and backward of a
--train-batch x --train-length batch, the second half of every row labelled, once with both
branches in the forward and once with the training loop's frozen-memory cache (tuned branch
only). Every figure is the median of --repetitions after a warm-up, variants interleaved.
"""

from __future__ import annotations

import argparse
import json

import torch
from peft import LoraConfig

from imsm import IMSMConfig, get_imsm_model
from imsm.bench.decode import chat_batch
from imsm.bench.output import write_json
from imsm.bench.timing import interleaved_medians
from imsm.model.load import load_model_and_tokenizer


def lora_model(model_name: str, dtype: str, layers: list[int] | None):
    base, tokenizer = load_model_and_tokenizer(model_name, dtype)
    config = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=layers)
    model = get_imsm_model(base, config, IMSMConfig())
    with torch.no_grad():  # a trained-looking adapter; speed does not depend on the values
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    return model, tokenizer


def with_sharing(model, share: bool, function):
    def run():
        model.share_lower_layers = share
        return function()

    return run


def decode_rates(models: dict, tokenizer, batch_size: int, new: int, repetitions: int) -> dict[str, float]:
    ids, mask = chat_batch(tokenizer, batch_size)
    functions = {}
    for name, (model, share) in models.items():
        model.eval()
        functions[name] = with_sharing(
            model, share, lambda m=model: m.generate(ids, mask, max_new_tokens=new, eos_token_id=[])
        )
    seconds = interleaved_medians(functions, repetitions)
    return {name: round(batch_size * new / s, 2) for name, s in seconds.items()}


def train_step_seconds(models: dict, batch: int, length: int, repetitions: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    vocabulary = next(iter(models.values()))[0].config.vocab_size
    input_ids = torch.randint(3, vocabulary, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, : length // 2] = -100

    def step(model, memory):
        def run():
            model.zero_grad(set_to_none=True)
            model(input_ids, attention_mask, labels=labels, return_logits=False, frozen_memory=memory).loss.backward()

        return run

    functions = {}
    for name, (model, share) in models.items():
        model.train()
        functions[f"{name}, both branches"] = with_sharing(model, share, step(model, None))
        memory = model.frozen_memory(input_ids, attention_mask, labels)
        functions[f"{name}, frozen memory"] = with_sharing(model, share, step(model, memory))
    seconds = interleaved_medians(functions, repetitions)
    return {name: round(s, 3) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--first-layer", type=int, default=15)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-length", type=int, default=115)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--output")
    args = parser.parse_args()

    everywhere, tokenizer = lora_model(args.model, args.dtype, None)
    layer_count = everywhere.config.num_hidden_layers
    upper, _ = lora_model(args.model, args.dtype, list(range(args.first_layer, layer_count)))
    upper.train()  # sharing must hold in training too (no dropout below the adapter)
    assert upper.shared_layer_count() == args.first_layer and everywhere.shared_layer_count() == 0
    models = {
        f"layers {args.first_layer}-{layer_count - 1}, shared": (upper, True),
        f"layers {args.first_layer}-{layer_count - 1}, unshared": (upper, False),
        f"all {layer_count} layers": (everywhere, True),
    }
    results = {
        "model": args.model,
        "dtype": str(next(upper.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "decode_tokens_per_s": {
            f"batch {b}": decode_rates(models, tokenizer, int(b), args.max_new_tokens, args.repetitions)
            for b in args.batch_sizes.split(",")
        },
        f"train_step_seconds_{args.train_batch}x{args.train_length}": train_step_seconds(
            models, args.train_batch, args.train_length, args.repetitions
        ),
    }
    print(json.dumps(results, indent=2))
    if args.output:
        write_json(args.output, results)


if __name__ == "__main__":
    main()
