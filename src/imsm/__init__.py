"""imsm: Interweaving Memories of a Siamese Large Language Model (Song et al., AAAI 2025).

One set of pre-trained weights runs as the frozen model and as the same model with any peft
adapter; a query-aware low-rank gate mixes their last hidden states before the output head.
"""

import importlib

from imsm.config import FUSION_MODES, IMSMConfig
from imsm.errors import IMSMError
from imsm.model.build import get_imsm_model
from imsm.model.siamese import IMSMModel, IMSMOutput
from imsm.version import __version__

__all__ = [
    "FUSION_MODES",
    "IMSMConfig",
    "IMSMError",
    "IMSMModel",
    "IMSMOutput",
    "IMSMTrainer",
    "__version__",
    "get_imsm_model",
]


def __getattr__(name: str):
    # Imported on first use: transformers' Trainer adds about a second to every `imsm` command, and
    # `imsm.trl` needs the optional TRL.
    if name == "IMSMTrainer":
        from imsm.train.trainer import IMSMTrainer

        return IMSMTrainer
    if name == "trl":
        return importlib.import_module("imsm.trl")
    raise AttributeError(f"module 'imsm' has no attribute {name!r}")
