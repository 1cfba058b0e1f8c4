"""`imsm.trl`, the documented name of `imsm.train.trl`: TRL's supervised fine-tuning data for `IMSMTrainer`."""

from imsm.train.trl import sft_dataset

__all__ = ["sft_dataset"]
