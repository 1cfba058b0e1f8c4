"""The frozen branch's memories, computed once per example before training and reused every
epoch: the frozen model never changes, so neither do they."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from imsm.model.siamese import FrozenMemory, IMSMModel
from imsm.train.examples import TokenizedSet, collate


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
