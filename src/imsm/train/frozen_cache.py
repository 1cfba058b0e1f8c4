"""The frozen branch's memories, computed once per example before training and reused every
epoch: the frozen model never changes, so neither do they.

They are also kept on disk, in a file named by a fingerprint of everything they depend on (the
frozen weights, their dtype and device type, the tokenised examples, padding and the batch size
they were computed in). A resumed run, and any other run on the same base model and examples (an
experiment's seeds, IMSM beside IMSM-mean), reads them back instead of running the frozen model
over the whole training set again. The build order is fixed, so a rebuild gives the same memories
(bit for bit where the arithmetic runs alike); a damaged file is rebuilt with a note, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from tqdm.auto import tqdm

from imsm.atomic_write import atomic_path
from imsm.checked_files import DamagedFile, read_safetensors
from imsm.errors import IMSMError
from imsm.model.siamese import FrozenMemory, IMSMModel
from imsm.train.examples import TokenizedSet, collate

# Bumped when what a cache file holds changes meaning, so older files are never read.
CACHE_FORMAT = 2  # 2: q_M is kept in fp32 (it was rounded to a bf16 model's dtype)
_SAMPLED_VALUES = 4096  # per weight tensor, for the fingerprint of the frozen weights
_CHECKSUM_CHUNK = 1 << 22  # 16-bit words (or bytes) per chunk of a weight's checksums
# How peft names a base weight it wraps: the PeftModel's prefix (none without an adapter), and the
# segments a tuner layer (`base_layer`) or a modules-to-save copy (`original_module`) inserts.
_WRAPPER_PREFIXES = ("peft_model.base_model.model.", "peft_model.")
_WRAPPER_SEGMENTS = {"base_layer", "original_module"}


@dataclass
class FrozenCache:
    """Per example: q_M [d] and h_M at its labelled positions [n_i, d], on the CPU."""

    query: list[torch.Tensor]
    hidden: list[torch.Tensor]

    def batch(self, indices: list[int]) -> FrozenMemory:
        """The memories of the examples `indices`, in that order, on the CPU."""
        # Row-major order of labelled positions = example order, then position order.
        return FrozenMemory(
            query=torch.stack([self.query[i] for i in indices]),  # [b, d]
            hidden=torch.cat([self.hidden[i] for i in indices]),  # [sum n_i, d]
        )


@torch.no_grad()
def build_frozen_cache(
    model: IMSMModel, data: TokenizedSet, pad_id: int, batch_size: int, device, progress: bool
) -> FrozenCache:
    """Run the frozen model once over every example, in a fixed order (so a resumed run sees
    bit-identical memories)."""
    query: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    examples = data.examples
    for start in tqdm(range(0, len(examples), batch_size), desc="frozen memories", disable=not progress, leave=False):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        memory = model.frozen_memory(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["query_mask"])
        counts = (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
        query.extend(memory.query.cpu().unbind(0))
        hidden.extend(memory.hidden.cpu().split(counts))
    return FrozenCache(query, hidden)


def base_weight_name(name: str) -> str:
    """A base weight's name as the base model has it, whichever peft method wraps it: without the
    wrapper's prefix and its `base_layer` / `original_module` segments. So the frozen branch of
    IMSM-LoRA and of IMSM-(IA)3 over one model, which runs on the same weights, has one digest."""
    for prefix in _WRAPPER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def weight_checksums(flat: torch.Tensor) -> bytes:
    """Three checksums over every bit of a flat tensor, computed where it lives: the sum of its
    16-bit words, of their squares, and of each word times its position (so moved values count).
    They are integer sums, exact in any order: the same weights give the same bytes whatever the
    thread count or device splits the reduction into (float sums did not)."""
    # int8 / fp8 / bool weights are read byte by byte; every wider dtype is a whole number of words.
    words = flat.contiguous().view(torch.uint8 if flat.element_size() == 1 else torch.int16)
    positions = torch.arange(1, min(words.numel(), _CHECKSUM_CHUNK) + 1, device=flat.device, dtype=torch.int64)
    per_chunk = []
    # In chunks, so that an int64 copy of a whole embedding matrix need not fit beside the model
    # and no chunk's sums can overflow (|word| < 2**15, position <= 2**22: each sum < 2**60).
    for start in range(0, words.numel(), _CHECKSUM_CHUNK):
        chunk = words[start : start + _CHECKSUM_CHUNK].to(torch.int64)
        weighted = (chunk * positions[: chunk.numel()]).sum()
        per_chunk.append(torch.stack([chunk.sum(), (chunk * chunk).sum(), weighted]))
    rows = torch.stack(per_chunk).tolist() if per_chunk else []  # one transfer per weight
    total, squares, moments = 0, 0, 0  # Python integers: exact, whatever the size
    for index, (chunk_sum, chunk_squares, chunk_moment) in enumerate(rows):
        total, squares = total + chunk_sum, squares + chunk_squares
        moments += chunk_moment + index * _CHECKSUM_CHUNK * chunk_sum  # positions counted from the tensor's start
    return f"{total},{squares},{moments}".encode()


@torch.no_grad()
def frozen_weights_digest(model: IMSMModel) -> str:
    """A digest of the weights the frozen branch runs on (the base group, by name: the adapter and
    the gate are left out whatever their state): every weight's name (as the base model has it),
    shape and dtype, integer checksums over all its bits (`weight_checksums`: one changed bit
    anywhere changes them), and an evenly strided sample of its values. Hashing every byte of an
    8B model on the CPU would take a minute; this reads each weight once on its device."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if model.parameter_group(name) != "base":
            continue
        flat = parameter.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _SAMPLED_VALUES)].float().cpu()
        digest.update(f"{base_weight_name(name)}|{tuple(parameter.shape)}|{parameter.dtype}|".encode())
        digest.update(weight_checksums(flat) + sample.numpy().tobytes())
    return digest.hexdigest()


def model_facts(model: IMSMModel) -> dict:
    """What else the frozen branch's numbers depend on: the architecture's settings (rope, norms,
    windows: buffers and constants, not weights) and the attention implementation."""
    config = model.config
    settings = config.to_dict() if hasattr(config, "to_dict") else {}
    # Settings that leave the frozen branch's numbers as they are (activation checkpointing turns
    # use_cache off, for one): a difference there must not cost a rebuild.
    for volatile in (
        "_name_or_path",
        "transformers_version",
        "_commit_hash",
        "use_cache",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
    ):
        settings.pop(volatile, None)
    return {"config": settings, "attention": str(getattr(config, "_attn_implementation", None))}


def cache_fingerprint(model: IMSMModel, data: TokenizedSet, pad_id: int, batch_size: int, device) -> str:
    """What the memories depend on, hashed: the file name they are kept under."""
    digest = hashlib.sha256()
    facts = {
        "format": CACHE_FORMAT,
        "weights": frozen_weights_digest(model),
        "model": model_facts(model),
        "dtype": str(model.frozen_head.weight.dtype),
        "device": torch.device(device).type,
        "pad_id": pad_id,
        "batch_size": batch_size,
    }
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    for example in data.examples:
        digest.update(json.dumps([example.prompt_length, example.input_ids]).encode())
    return digest.hexdigest()[:32]


def _expected_counts(data: TokenizedSet) -> list[int]:
    # The positions whose next token is labelled: the answer's tokens, each predicted from the one before.
    return [len(e.input_ids) - e.prompt_length for e in data.examples]


def save_frozen_cache(cache: FrozenCache, path: Path) -> None:
    """Write the cache whole under `path` (a safetensors file), or leave nothing there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "query": torch.stack(cache.query).contiguous(),  # [N, d]
        "hidden": torch.cat(cache.hidden).contiguous(),  # [sum n_i, d]
        "counts": torch.tensor([len(h) for h in cache.hidden], dtype=torch.int64),  # [N]
    }
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": str(CACHE_FORMAT)})


def read_frozen_cache(path: Path, data: TokenizedSet) -> FrozenCache:
    """The cache stored at `path` for `data`; DamagedFile if it is damaged or does not fit the data."""
    fix = "it is rebuilt"
    tensors = read_safetensors(path, fix=fix)
    if set(tensors) != {"query", "hidden", "counts"}:
        raise DamagedFile(path, f"holds tensors {sorted(tensors)}, not a frozen-memory cache", fix)
    counts = tensors["counts"].tolist()
    if counts != _expected_counts(data) or tensors["query"].shape[0] != len(counts):
        raise DamagedFile(path, "does not fit these training examples", fix)
    if tensors["hidden"].shape[0] != sum(counts) or tensors["hidden"].shape[1:] != tensors["query"].shape[1:]:
        raise DamagedFile(path, "holds tensors of inconsistent shapes", fix)
    return FrozenCache(list(tensors["query"].unbind(0)), list(tensors["hidden"].split(counts)))


def stored_frozen_cache(
    model: IMSMModel,
    data: TokenizedSet,
    pad_id: int,
    batch_size: int,
    device,
    directory: Path,
    progress: bool,
    write: bool = True,
    note: Callable[[str], None] | None = None,
) -> tuple[FrozenCache, bool]:
    """The memories for `data` from `directory` when stored there, else built (and stored, when
    `write`: the main process of a distributed run). Returns (cache, whether it was read back)."""
    note = note or (lambda line: print(f"imsm: {line}", file=sys.stderr))
    path = directory / f"{cache_fingerprint(model, data, pad_id, batch_size, device)}.safetensors"
    if path.exists():
        try:
            return read_frozen_cache(path, data), True
        except DamagedFile as error:
            note(str(error))
    cache = build_frozen_cache(model, data, pad_id, batch_size, device, progress)
    if write:
        try:
            save_frozen_cache(cache, path)
        except (OSError, IMSMError, SafetensorError) as error:  # only a saving: training goes on without it
            note(f"could not keep the frozen memories in {directory} ({str(error).splitlines()[0]}); training goes on")
    return cache, False
