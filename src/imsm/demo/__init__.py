"""`imsm demo`: LoRA against IMSM-LoRA on the embedded model, learning and forgetting side by side.

`run` trains and evaluates, `data` writes the generated offline tasks, and `knowledge` reads forgetting
as the log-likelihood of ARC-Easy and SciQ options.
"""

from imsm.demo.run import run_demo

__all__ = ["run_demo"]
