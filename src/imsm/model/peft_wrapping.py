"""Wrapping a transformers model in peft without the deprecation noise of their version skew.

peft asks every model it wraps for `is_gradient_checkpointing`, which transformers 5
has renamed `is_activation_checkpointing` and answers with a FutureWarning on each load: a
warning the user can do nothing about, printed once per evaluation in a grid's log. Only that
one warning is silenced, and only around peft's wrapping, so any other stays visible.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_RENAMED_PROPERTY = r"`is_gradient_checkpointing` is deprecated"


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Run peft's `get_peft_model` / `PeftModel.from_pretrained` inside this."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RENAMED_PROPERTY, category=FutureWarning)
        yield
