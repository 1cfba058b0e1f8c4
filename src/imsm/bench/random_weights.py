"""Models of a real size with random weights, for speed measurements where no weights are at hand.

Speed does not depend on the weights' values, so a Llama-3-8B-sized model built from its
config.json times like the real one. The weights are created on the device in the dtype asked
for (an 8B model never passes through host memory, nor through fp32). The tokenizer only has to
produce valid ids: the directory's own if it has one, else a byte-level tokenizer built in code
(one token per byte, no file and no download, so a machine without network needs nothing more).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from imsm.errors import IMSMError
from imsm.model.load import resolve_dtype

BYTE_TOKENIZER_SPECIALS = ("<|endoftext|>", "<|pad|>")  # ids 256 and 257, after the 256 bytes


def _config_file(source: str) -> Path:
    path = Path(source).expanduser()
    candidate = path / "config.json" if path.is_dir() else path
    if not candidate.is_file():
        raise IMSMError(
            f"--random-weights needs --model to be a config.json or a directory holding one; "
            f"{source!r} is neither (configs/architectures/ has examples)"
        )
    return candidate


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Bytes as tokens (ids 0-255), then EOS and padding; no chat template. Every text is valid
    and k ASCII characters are exactly k tokens, so synthetic data has the length it is given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # The byte-level alphabet maps each byte to a printable character; sorted, so ids never move.
    vocabulary = {character: index for index, character in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    eos, pad = BYTE_TOKENIZER_SPECIALS
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=pad)


def random_causal_lm(source: str, dtype: str = "auto", device: str | torch.device | None = None, seed: int = 0):
    """The architecture in `source` (a config.json or its directory) with random weights, created
    on `device` (CUDA if available) in `dtype`, in evaluation mode."""
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
    # Allocated and initialised on the device, directly in `torch_dtype` (from_config builds under
    # that default dtype): no fp32 copy, no host copy.
    with target:
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    return model.eval()


def random_model_and_tokenizer(
    source: str, dtype: str = "auto", device: str | torch.device | None = None, seed: int = 0
):
    """(model, tokenizer): the architecture in `source` with random weights, built on the device,
    and the tokenizer beside the config, else `byte_tokenizer()`."""
    model = random_causal_lm(source, dtype, device, seed)
    directory = _config_file(source).parent
    if (directory / "tokenizer.json").exists() or (directory / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    else:
        tokenizer = byte_tokenizer()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > model.config.vocab_size:
        raise IMSMError(
            f"the tokenizer ({len(tokenizer)} tokens) does not fit the model's vocabulary ({model.config.vocab_size}); "
            "put a matching tokenizer beside the config"
        )
    return model, tokenizer
