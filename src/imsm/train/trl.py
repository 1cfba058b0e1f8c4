"""TRL's supervised fine-tuning data, prepared for `IMSMTrainer` (TRL's own trainers are refused).

TRL's trainers cannot train an `IMSMModel` (`IMSMModel.add_model_tags` refuses them): they take
the loss from the causal LM's own backbone and head (SFTTrainer patches `forward` with a fused
LM head), which would train the tuned branch alone, without the frozen branch and the gate. What
SFTTrainer adds for supervised fine-tuning is its data preparation, and `sft_dataset` does it the
way SFTTrainer does for prompt-completion rows (trl 1.16, `SFTTrainer._prepare_dataset`), with
TRL's own `is_conversational` and `common_prefix_length`:

- conversational rows go through the tokenizer's chat template, the prompt with the generation
  prompt; plain-text rows get the tokenizer's EOS after the completion;
- labels are -100 on the prompt (TRL's completion-only loss), which is also how IMSM finds its
  query (paper eq. 3);
- sequences longer than `max_length` keep their start (TRL's "keep_start"), and rows left without
  any label are dropped.

Language-modelling rows ("text", "messages") are refused: IMSM's gate reads the mean state of the
prompt, so every row needs one.
"""

from __future__ import annotations

import json
from typing import Any

from imsm.errors import IMSMError
from imsm.model.siamese import IGNORE_INDEX

try:
    from datasets import Dataset
    from trl.data_utils import common_prefix_length, is_conversational
except ImportError as error:  # an optional extra
    raise ImportError(f"imsm.trl needs TRL ({error}); install it with pip install 'imsm[trl]'") from error


def sft_dataset(dataset: Dataset | list[dict[str, Any]], tokenizer, max_length: int | None = 1024) -> Dataset:
    """Rows of `input_ids` and `labels` for `IMSMTrainer`, as SFTTrainer would prepare them.

    Args:
        dataset: TRL's prompt-completion format, conversational (`{"prompt": [{"role": "user",
            "content": ...}], "completion": [{"role": "assistant", "content": ...}]}`) or plain text
            (`{"prompt": "...", "completion": "..."}`); a `datasets.Dataset` or a list of rows.
        tokenizer: The model's tokenizer (with a chat template for conversational rows).
        max_length: Longest sequence kept, in tokens (SFTConfig's default 1024); None keeps all.

    Returns:
        A `datasets.Dataset` with the columns `input_ids` and `labels` (-100 on the prompt).
    """
    if isinstance(dataset, list):
        dataset = Dataset.from_list(dataset)
    missing = sorted({"prompt", "completion"} - set(dataset.column_names))
    if missing:
        raise IMSMError(
            f"sft_dataset needs TRL's prompt-completion rows, with the columns 'prompt' and 'completion'; this dataset "
            f"lacks {missing} (it has {dataset.column_names}). IMSM's gate reads the prompt, so language-modelling "
            "rows ('text', 'messages') need splitting: e.g. the last assistant message as the completion"
        )
    prepared = dataset.map(
        _tokenize,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
        remove_columns=dataset.column_names,
        desc="Tokenizing for IMSMTrainer",
    )
    return prepared.filter(lambda row: any(label != IGNORE_INDEX for label in row["labels"]))


def _tokenize(row: dict[str, Any], tokenizer, max_length: int | None) -> dict[str, list[int]]:
    """One prompt-completion row as SFTTrainer tokenises it, labels on the completion only."""
    if is_conversational(row):
        tools = row.get("tools")
        options = {
            "tools": json.loads(tools) if isinstance(tools, str) else tools,
            **row.get("chat_template_kwargs", {}),
        }
        prompt_ids = tokenizer.apply_chat_template(
            row["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True, **options
        )["input_ids"]
        ids = tokenizer.apply_chat_template(
            row["prompt"] + row["completion"], tokenize=True, return_dict=True, **options
        )["input_ids"]
    else:
        completion = row["completion"]
        if tokenizer.eos_token is not None and not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        prompt_ids = tokenizer(text=row["prompt"])["input_ids"]
        ids = tokenizer(text=row["prompt"] + completion)["input_ids"]
    # The completion starts where the two tokenisations part, which a chat template or a token
    # merging across the boundary can put before the end of the prompt alone.
    prompt_length = common_prefix_length(prompt_ids, ids)
    labels = [IGNORE_INDEX] * prompt_length + list(ids[prompt_length:])
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": list(ids), "labels": labels}
