"""Shared lower layers: the decoder layers below the first adapted one run once for both branches.

When the adapter leaves the bottom k decoder layers alone (peft's `layers_to_transform`, or target
modules that skip them), those layers read the same tokens with the same weights in the frozen
and the tuned branch, so their states are identical. Both mechanisms below are forward hooks on
the transformers decoder layers: the backbone's own forward still builds the embeddings, causal
masks, rotary tables and cache, so nothing of any architecture is re-implemented here.

- `doubled_from`: one backbone call over B rows whose batch doubles to [frozen rows | tuned rows]
  at layer k (decoding). Below k the layers run, and cache keys and values, for B rows only.
- `capture_input` + `start_from`: the frozen branch records layer k's input; the tuned branch
  skips layers 0..k-1 and starts from it (the forward, where the two branches differ in
  gradient and dropout, so they cannot share one batch above k).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

# Attention implementations whose per-layer arguments are plain batch-first tensors (a 4-D mask,
# or None for a causal mask the kernel builds itself), which `doubled_from` can repeat. Others
# (flash attention's packed-sequence arguments, flex attention's BlockMask) decode unshared.
DOUBLING_ATTENTION = ("eager", "sdpa")

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def find_decoder_layers(backbone: nn.Module, num_layers: int | None) -> nn.ModuleList | None:
    """The backbone's stack of decoder layers (`layers` in Llama, `h` in GPT-2), or None."""
    for child in backbone.children():
        if isinstance(child, nn.ModuleList) and len(child) == num_layers:
            return child
    return None


def first_adapted_layer(layers: nn.ModuleList, adapted: Iterable[nn.Module], head: nn.Module) -> int:
    """Index of the lowest decoder layer that holds an adapted module.

    0 when an adapted module sits outside the stack (embeddings, a norm): it may run before the
    layers, so nothing is shared. Modules of the output head run after the stack and do not
    count. `len(layers)` when only the head is adapted.
    """
    owner = {id(module): index for index, layer in enumerate(layers) for module in layer.modules()}
    after_stack = {id(module) for module in head.modules()}
    first = len(layers)
    for module in adapted:
        if id(module) in after_stack:
            continue
        if id(module) not in owner:
            return 0
        first = min(first, owner[id(module)])
    return first


def trains_like_it_evaluates(backbone: nn.Module, layers: nn.ModuleList, first: int) -> bool:
    """Whether everything below layer `first` computes the same in training as in evaluation mode.

    The frozen branch always runs in evaluation mode; the tuned branch in training mode would
    apply dropout below layer `first` too, so its lower states would differ. Dropout hides both in
    modules and in attention functions that read a probability from the config, so both are
    checked (conservatively: any config dropout above 0 counts, wherever it is used).
    """
    upper = {id(module) for layer in layers[first:] for module in layer.modules()}
    for module in backbone.modules():
        if id(module) not in upper and isinstance(module, _DROPOUT) and module.p > 0:
            return False
    for name, value in backbone.config.to_dict().items():
        is_probability = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ("dropout" in name or "pdrop" in name) and is_probability and value > 0:
            return False
    return True


@contextlib.contextmanager
def doubled_from(layers: nn.ModuleList, first: int, rows: int) -> Iterator[None]:
    """Double the batch at layer `first`: [x; x] for every batch-first tensor that reaches it.

    A backbone call over `rows` rows then runs layers below `first` on `rows` rows (their cache
    too), and layers from `first` on `2 * rows`: the hidden states, and the per-layer arguments
    built for `rows` rows (attention mask, position ids, rotary cos/sin), are repeated as they
    enter each upper layer. Rows [0, rows) and [rows, 2 rows) start out identical; the branch
    router then makes the first half the frozen model and the second the tuned one.
    """
    # One repeat per tensor per call: every upper layer receives the same mask and rotary tables.
    doubled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def double(value):
        if isinstance(value, torch.Tensor):
            # Tensors with another leading size are already doubled (hidden states above
            # `first`) or not per-row (1-D cache positions): they pass unchanged.
            if value.dim() < 2 or value.shape[0] != rows:
                return value
            if id(value) not in doubled:  # the tensor is kept alive with its id, so ids stay unique
                doubled[id(value)] = (value, torch.cat([value, value], dim=0))  # [2 rows, ...]
            return doubled[id(value)][1]
        if isinstance(value, tuple):  # rotary (cos, sin)
            return tuple(double(item) for item in value)
        return value

    def hook(module, args, kwargs):
        if module is layers[first]:
            doubled.clear()  # a new backbone call: new masks, new tables
        return tuple(double(item) for item in args), {name: double(item) for name, item in kwargs.items()}

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers[first:]]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        doubled.clear()


@contextlib.contextmanager
def capture_input(layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the hidden states entering `layer` as `captured["hidden"]`."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def start_from(layers: nn.ModuleList, first: int, hidden: torch.Tensor) -> Iterator[None]:
    """Skip layers below `first` and feed `hidden` to layer `first` instead of what reaches it.

    The backbone still embeds the tokens and builds the masks and position tables every layer
    needs; the skipped layers pass their input through, and it is replaced at layer `first`.
    """

    def skip(hidden_states, *args, **kwargs):
        return hidden_states

    def replace(module, args, kwargs):
        arriving = args[0] if args else kwargs["hidden_states"]
        assert arriving.shape == hidden.shape, (tuple(arriving.shape), tuple(hidden.shape))
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    # An instance attribute shadows the class's forward (hooks still run); one already there
    # (accelerate's offloading hooks put one) is put back afterwards.
    previous = [layer.__dict__.get("forward") for layer in layers[:first]]
    handle = layers[first].register_forward_pre_hook(replace, with_kwargs=True)
    try:
        for layer in layers[:first]:
            layer.forward = skip
        yield
    finally:
        handle.remove()
        for layer, forward in zip(layers[:first], previous, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
