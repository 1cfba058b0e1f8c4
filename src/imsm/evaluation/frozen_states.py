"""The frozen branch's states for scoring, computed once per base model and reused by every adapter
evaluated on it: the frozen branch is the base model, the same in every cell and variant of a study.

A store is a directory, `DIR/<fingerprint>/<task>.safetensors`, the fingerprint covering what the
states depend on beyond the tokens (the frozen weights, the architecture's settings, dtype, device
type, this format's version; `imsm.train.frozen_cache` computes the same facts for training).
Inside, each entry is content-addressed by its tokens (a prompt and the continuation scored after
it), so another prompt format or data file reads new entries and never an old one. A file that
cannot be read back whole is rebuilt, with one line saying so, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import sys
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from imsm.atomic_write import atomic_path
from imsm.checked_files import DamagedFile, read_safetensors
from imsm.errors import IMSMError
from imsm.model.siamese import IMSMModel
from imsm.model.states import FrozenPromptStates
from imsm.train.frozen_cache import frozen_weights_digest, model_facts

# Bumped when what a store file holds changes meaning, so older stores are never read.
STATES_FORMAT = 1
_KEY_BYTES = 16
_TENSORS = {"keys", "query", "counts", "hidden"}


def state_key(prompt: Sequence[int], continuation: Sequence[int]) -> bytes:
    """The address of one entry: a digest of the prompt's and the continuation's token ids."""
    return hashlib.sha256(json.dumps([list(prompt), list(continuation)]).encode()).digest()[:_KEY_BYTES]


def uses_frozen_states(model: IMSMModel, drift: bool = False) -> bool:
    """Whether scoring with `model` reads the frozen branch: a siamese fusion over an adapter, or
    (`drift`) any adapter, whose base model drift compares against. Otherwise nothing is built."""
    return model.has_adapter and (drift or model.imsm_config.is_siamese)


def states_fingerprint(model: IMSMModel) -> str:
    """What the frozen branch's numbers depend on beyond the tokens, hashed: the store's directory."""
    facts = {
        "format": STATES_FORMAT,
        "weights": frozen_weights_digest(model),
        "model": model_facts(model),
        "dtype": str(model.frozen_head.weight.dtype),
        "device": model.device.type,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class TaskStates:
    """One task's entries of a store: read from its file, added to, written back whole.

    Attributes:
        path: The file, `DIR/<fingerprint>/<task>.safetensors`.
        added: How many entries this run computed (0: everything was read back).
        unsaved: How many of them are not written yet.
    """

    def __init__(self, path: Path, note: Callable[[str], None]):
        self.path = path
        self.note = note
        self.added = self.unsaved = 0
        self._entries: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = self._read(note)

    def _read(self, note: Callable[[str], None] | None) -> dict[bytes, tuple[torch.Tensor, torch.Tensor]]:
        if not self.path.exists():
            return {}
        try:
            return read_entries(self.path)
        except DamagedFile as error:
            if note is not None:
                note(str(error))
            return {}

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: bytes, query: torch.Tensor, hidden: torch.Tensor) -> None:
        """Keep q_M [d] and h_M [n, d] for one entry (on the CPU)."""
        self._entries[key] = (query.detach().cpu(), hidden.detach().cpu())
        self.added += 1
        self.unsaved += 1

    def prompt_states(self, keys: Sequence[bytes]) -> FrozenPromptStates:
        """The states of one prompt's continuations, `keys` in continuation order (all stored)."""
        entries = [self._entries[key] for key in keys]
        return FrozenPromptStates(entries[0][0], [hidden for _, hidden in entries])

    def hidden(self, key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_M [d], h_M [n, d]) of one stored entry."""
        return self._entries[key]

    def save(self) -> None:
        """Write every entry, with any another worker wrote meanwhile, atomically: a reader sees
        the old file or the new one, and entries agree wherever two workers computed the same."""
        on_disk = self._read(None)  # another worker's entries; a damaged file adds none
        entries = {**on_disk, **self._entries}
        self._entries = entries
        keys = list(entries)
        tensors = {
            "keys": torch.tensor([list(key) for key in keys], dtype=torch.uint8),  # [N, 16]
            "query": torch.stack([entries[k][0] for k in keys]).contiguous(),  # [N, d]
            "counts": torch.tensor([len(entries[k][1]) for k in keys], dtype=torch.int64),  # [N]
            "hidden": torch.cat([entries[k][1] for k in keys]).contiguous(),  # [sum n, d]
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as temporary:
                save_file(tensors, str(temporary), metadata={"format": str(STATES_FORMAT)})
        except (OSError, IMSMError, SafetensorError) as error:  # only a saving: this run has them in memory
            self.note(
                f"could not keep the frozen branch's states in {self.path} ({str(error).splitlines()[0]}); going on"
            )
        self.unsaved = 0


def read_entries(path: Path) -> dict[bytes, tuple[torch.Tensor, torch.Tensor]]:
    """The entries of a store file; DamagedFile when it cannot be read back whole and consistent."""
    fix = "it is rebuilt"
    tensors = read_safetensors(path, fix=fix)
    if set(tensors) != _TENSORS:
        raise DamagedFile(path, f"holds tensors {sorted(tensors)}, not frozen-branch states", fix)
    keys, query, counts, hidden = (tensors[name] for name in ("keys", "query", "counts", "hidden"))
    consistent = (
        keys.dim() == 2
        and keys.shape[1] == _KEY_BYTES
        and query.dim() == hidden.dim() == 2
        and len(keys) == len(query) == len(counts)
        and bool((counts > 0).all())
        and int(counts.sum()) == len(hidden)
        and query.shape[1] == hidden.shape[1]
    )
    if not consistent:
        raise DamagedFile(path, "holds tensors of inconsistent shapes", fix)
    parts = hidden.split(counts.tolist())
    return {bytes(key.tolist()): (q, h) for key, q, h in zip(keys, query, parts, strict=True)}


class FrozenStateStore:
    """A directory of frozen-branch states shared by every evaluation on the same base model.

    Pass it to `imsm.evaluation.run.evaluate_task` (or `imsm eval --frozen-states DIR`): scoring
    then reads the frozen branch's states from it, computes (and adds) only those it lacks, and
    runs the tuned branch alone. Models whose fusion never reads the frozen branch leave it alone.
    """

    def __init__(self, directory: str | Path, note: Callable[[str], None] | None = None):
        self.directory = Path(directory)
        self.note = note or (lambda line: print(f"imsm: {line}", file=sys.stderr))
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def fingerprint(self, model: IMSMModel) -> str:
        """The model's fingerprint, computed once per model (its base weights do not change)."""
        if model not in self._fingerprints:
            self._fingerprints[model] = states_fingerprint(model)
        return self._fingerprints[model]

    def open(self, model: IMSMModel, name: str) -> TaskStates:
        """The entries kept for `model`'s frozen branch under the task `name` (a file name stem)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)
        return TaskStates(self.directory / self.fingerprint(model) / f"{safe}.safetensors", self.note)
