"""One decoding step after the prefill: the token just chosen goes to both branches, the next fused
logits come back. `imsm.model.decode` runs the loop around it.

By default the step grows transformers' `DynamicCache` and the attention mask by one column per
token, so every step has new shapes. With `cache_implementation="static"` (`DecodingPlan`) the
prefill writes into transformers' `StaticCache`, sized for the whole call, and every step has the
same shapes: the mask as wide as the cache (the causal mask hides the columns not yet written),
the cache's tensors at fixed addresses. That is what `torch.compile` needs to trace the step once
and, with mode "reduce-overhead" on CUDA, to replay it as a CUDA graph: one launch per token
instead of some hundreds of small kernels each started from Python.

Either way the step is `BranchModel.cached_branch_states` then `BranchModel.fused_logits`, as in
the prefill; the compiled step is those two calls traced, the fusion still `imsm.model.gate`'s.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator

import torch
from transformers import CompileConfig, StaticCache

from imsm.errors import IMSMError
from imsm.model.states import BranchStates, SiameseModel

# A static cache holds prompt + new tokens rounded up to this, so calls whose lengths differ a
# little reuse one cache and one compiled step (the extra columns are masked, never read).
CACHE_LENGTH_STEP = 64

# Per model, the last static cache, kept for the next call of the same shape: a CUDA graph
# recorded the addresses of its tensors (transformers' `generate` keeps its cache for the same reason).
_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# One compiled step per compile configuration; dynamo guards on the model it is given.
_COMPILED: dict[str, Callable] = {}


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Each row's position id of its last token, padding not counted -> [R, 1]."""
    return (mask.long().sum(dim=-1, keepdim=True) - 1).clamp(min=0)


def static_cache(model: SiameseModel, rows: int, length: int) -> StaticCache:
    """A `StaticCache` for `rows` prompts of up to `length` tokens in all, rounded up to
    `CACHE_LENGTH_STEP`; the model's last one is reset and reused when its shape fits."""
    # The prefill is given a cache, so `cached_branch_states` does not make its prefill check.
    model.router.check_unmerged()
    length = -(-length // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP
    head = model.frozen_head.weight
    key = (rows, length, model.shared_layer_count(doubled_batch=True), head.device, head.dtype)
    held = _CACHES.get(model)
    if held is not None and held[0] == key:
        held[1].reset()  # zeroes keys, values and lengths in place: the addresses stay
        return held[1]
    # Each layer allocates at its first update, sized by what reaches it: R rows in shared lower
    # layers, 2R (frozen | tuned) above them.
    cache = StaticCache(config=model.config, max_cache_len=length)
    if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        # A sliding layer's static cache is a ring of the window's length, which the one mask as
        # wide as the cache (`DecodingStep`) does not describe; not tested, so not offered.
        raise IMSMError(
            "cache_implementation='static': this model has sliding-window attention layers, which IMSM's "
            "static decoding does not support; decode with the default dynamic cache"
        )
    _CACHES[model] = (key, cache)
    return cache


def _fused_step(model, input_ids, attention_mask, position_ids, cache, query_frozen, query_tuned) -> torch.Tensor:
    """Both branches over one new token per row, through the cache, then the fused logits [R, V]."""
    step, cache = model.cached_branch_states(input_ids, attention_mask, position_ids, cache)
    # The query memory stays the prompt's (Algorithm 1).
    states = BranchStates(step.frozen, step.tuned, query_frozen, query_tuned)  # [R, 1, d]
    return model.fused_logits(states).logits[:, -1]


def compiled_step(config: CompileConfig) -> Callable:
    """`_fused_step` under `torch.compile` with `config`'s settings, compiled once per process."""
    settings = config.to_dict()
    key = repr(sorted(settings.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_fused_step, **settings)
    return _COMPILED[key]


@contextlib.contextmanager
def compilable(model: SiameseModel, config: CompileConfig | None) -> Iterator[None]:
    """While compiled decoding runs, the lower layers are not shared: their sharing registers
    forward hooks at every call (`imsm.model.shared_layers`), which breaks dynamo's graph. The
    prefill then caches 2R rows in every layer, as the compiled step expects. Tokens are the same
    either way (tests/test_decoding_equivalence.py)."""
    if config is None or not model.share_lower_layers:
        yield
        return
    model.share_lower_layers = False
    try:
        yield
    finally:
        model.share_lower_layers = True


class DecodingStep:
    """Feeds each chosen token to both halves of the doubled batch; returns the next fused logits.

    Args:
        model: The siamese model whose prefill filled `cache`.
        mask: [R, T], the prompts' attention mask.
        cache: The prefill's cache: a `DynamicCache`, grown by one column per step, or a
            `StaticCache`, written in place, whose shapes never change.
        last: The prefill's states; their query memories are read at every step.
        compile_config: With a static cache, compile the step with these settings; None: eager.
    """

    def __init__(self, model, mask: torch.Tensor, cache, last: BranchStates, compile_config=None):
        self.model, self.cache, self.last = model, cache, last
        self.position = last_positions(mask)  # [R, 1]
        self.static = isinstance(cache, StaticCache)
        self.mask = mask
        if self.static:
            # [R, L]: the columns after the prompt are all ones; the causal mask hides those not
            # yet written, so the mask is the same tensor at every step.
            width = cache.layers[0].max_cache_len
            self.mask = torch.cat([mask, mask.new_ones(mask.shape[0], width - mask.shape[1])], dim=1)
        self.compiled = self.static and compile_config is not None
        self.function = compiled_step(compile_config) if self.compiled else _fused_step

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """token [R] -> logits [R, V] for the position after it."""
        self.position = self.position + 1
        if not self.static:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed
        last = self.last
        logits = self.function(
            self.model, token[:, None], self.mask, self.position, self.cache, last.query_frozen, last.query_tuned
        )
        # A CUDA graph's output is overwritten by its next replay; processors may keep the logits.
        return logits.clone() if self.compiled else logits
