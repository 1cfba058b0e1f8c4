"""The committed study files that have not run yet read what their comments say they read."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from imsm.data import load_examples
from imsm.experiment.spec import load_experiment
from imsm.peft_methods.builders import PEFT_METHODS
from imsm.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMSM_DATA_DIR") or ROOT.parent / "shared" / "data")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not beside the checkout")
def test_the_ropes_paper_budget_reads_lora_and_imsm_lora_at_each_epoch_s_end_with_the_paper_s_settings():
    experiment = load_experiment(ROOT / "configs" / "forgetting-ropes-paper-budget.yaml")
    method = PEFT_METHODS.get("lora")
    assert (method.batch_size, method.learning_rate) == (16, 3e-4)  # the paper's LoRA settings
    # Every ROPES training pair fits the 512-token limit (the ladder ran 2,731 steps of 4 on all of them).
    per_epoch = math.ceil(len(load_examples(get_task("ropes"), "train", SHARED_DATA)) / method.batch_size)
    assert {(c.config["fusion"], c.config["seed"]) for c in experiment.cells} == {
        (fusion, seed) for fusion in ("none", "imsm") for seed in (0, 1, 2)
    }
    for cell in experiment.cells:
        assert cell.config["epochs"] == 3 and cell.config["learning_rate"] is None and cell.config["batch_size"] is None
        assert sorted(cell.variants) == sorted(f"step={per_epoch * epoch}" for epoch in (1, 2))
