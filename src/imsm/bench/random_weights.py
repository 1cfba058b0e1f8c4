"""Models of a real size with random weights, for speed measurements where no weights are at hand.

Speed does not depend on the weights' values, so a Llama-3-8B-sized model built from its
config.json times like the real one. The tokenizer only has to produce valid ids: the
directory's own if it has one, else the embedded smollm2-135m's (its ids fit any larger vocabulary).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from imsm.errors import IMSMError
from imsm.model.load import converted_embedded_model, resolve_dtype

FALLBACK_TOKENIZER = "smollm2-135m"


def _config_file(source: str) -> Path:
    path = Path(source).expanduser()
    candidate = path / "config.json" if path.is_dir() else path
    if not candidate.is_file():
        raise IMSMError(
            f"--random-weights needs --model to be a config.json or a directory holding one; "
            f"{source!r} is neither (configs/architectures/ has examples)"
        )
    return candidate


def random_model_and_tokenizer(source: str, dtype: str = "auto", device: str | None = None, seed: int = 0):
    """(model, tokenizer): the architecture in `source` with random weights, built on the device."""
    config_file = _config_file(source)
    try:
        values = json.loads(config_file.read_text())
        if not isinstance(values, dict) or "model_type" not in values:
            raise ValueError("no model_type")
        config = AutoConfig.for_model(**values)
    except (ValueError, KeyError, TypeError) as error:
        raise IMSMError(f"{config_file}: not a transformers model config ({error}); fix the file") from None
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = resolve_dtype(dtype, target)
    torch.manual_seed(seed)
    with target:  # allocate on the device directly: an 8B model never passes through host memory
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.eval()
    tokenizer_source = config_file.parent
    if not (tokenizer_source / "tokenizer.json").exists() and not (tokenizer_source / "tokenizer_config.json").exists():
        tokenizer_source = converted_embedded_model(FALLBACK_TOKENIZER)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > config.vocab_size:
        raise IMSMError(
            f"the tokenizer ({len(tokenizer)} tokens) does not fit the model's vocabulary ({config.vocab_size}); "
            "put a matching tokenizer beside the config"
        )
    return model, tokenizer
