"""Multiple-choice scoring speed (`imsm bench choice`): IMSM against lm-evaluation-harness's `hf` model.

The same items of the knowledge probes (ARC-Easy/Challenge, PIQA, SciQ, WinoGrande), the same
LoRA adapter, dtype and batch size, timed in turns in one process:
- imsm: IMSM-LoRA (both branches and the gate); each question's context is prefilled once for
  both branches and every option is scored from that cache (`imsm.evaluation.scoring.score_requests`);
- imsm cached: the same IMSM model with the frozen branch's states already in a store
  (`imsm.evaluation.frozen_states`), as every cell of a study after the first finds them: the
  tuned branch alone, then the gate; the store's file is read inside the timed call;
- vanilla: the same adapter as plain peft through the same code (`--fusion none`);
- lm-eval: lm-evaluation-harness 0.4.13's `hf` model with `peft=` the same adapter, which runs
  context + option once per option.
Every variant tokenises the requests inside its timed call, as lm-eval does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from imsm.bench.decode import adapted_model
from imsm.bench.timing import interleaved_medians
from imsm.data import load_examples, resolve_data_dir
from imsm.errors import IMSMError
from imsm.evaluation.frozen_states import FrozenStateStore
from imsm.evaluation.scoring import add_frozen_states, encode_pair, score_requests
from imsm.model.load import load_model_and_tokenizer, resolve_model_source
from imsm.model.siamese import IMSMModel
from imsm.tasks import get_task

KNOWLEDGE_TASKS = ("arc_easy", "arc_challenge", "piqa", "sciq", "winogrande")


def _requests(task_names, data_dir, limit: int) -> list[tuple[str, str]]:
    """(context, continuation) strings of the first `limit` items of each task, in task order."""
    requests = []
    for name in task_names:
        task = get_task(name)
        if task.requests is None:
            raise IMSMError(f"task {name} is not a multiple-choice task; pass some of {', '.join(KNOWLEDGE_TASKS)}")
        for record in load_examples(task, None, data_dir, limit):
            requests.extend(task.requests(record))
    return requests


def _lm_eval_hf(model_directory: str, adapter: Path, dtype: str, batch_size: int, device: str):
    """lm-eval's own `hf` model on a local model directory with a peft adapter."""
    try:
        from lm_eval.models.huggingface import HFLM  # optional: `pip install imsm[lm-eval]`
    except ImportError:
        raise IMSMError(
            "`imsm bench choice` compares with lm-evaluation-harness: pip install 'imsm[lm-eval]'"
        ) from None
    torch_dtype = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    return HFLM(pretrained=model_directory, peft=str(adapter), dtype=torch_dtype, batch_size=batch_size, device=device)


def bench_choice(
    model_name: str = "smollm2-135m",
    peft: str = "lora",
    dtype: str = "fp32",
    tasks: tuple[str, ...] = KNOWLEDGE_TASKS,
    limit: int = 50,
    batch_size: int = 8,
    repetitions: int = 2,
    data_dir=None,
) -> dict[str, Any]:
    """Requests per second of IMSM, vanilla peft and lm-eval's `hf` model on the same requests."""
    from lm_eval.api.instance import Instance  # optional dependency, checked by _lm_eval_hf first

    if dtype not in ("fp32", "bf16"):
        raise IMSMError(f"--dtype must be fp32 or bf16 here (lm-eval is given the same), got {dtype!r}")
    requests = _requests(tasks, resolve_data_dir(data_dir), limit)
    imsm_model, tokenizer = adapted_model(model_name, dtype, peft, fusion="imsm")
    with tempfile.TemporaryDirectory(prefix="imsm-bench-choice-") as scratch:
        adapter = Path(scratch) / "adapter"
        imsm_model.peft_model.save_pretrained(str(adapter))  # the plain peft adapter: what lm-eval loads
        base, _ = load_model_and_tokenizer(model_name, dtype)
        vanilla = IMSMModel.from_pretrained(base, str(adapter)).eval()
        hf = _lm_eval_hf(resolve_model_source(model_name), adapter, dtype, batch_size, str(imsm_model.device))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        instances = [
            Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(requests)
        ]

        store = FrozenStateStore(Path(scratch) / "frozen-states")
        started = time.perf_counter()
        store.fingerprint(imsm_model)  # once per model and task list in an evaluation, not per batch
        fingerprint_seconds = time.perf_counter() - started

        def ours(model, cached: bool = False):
            def run():
                encoded = [[encode_pair(tokenizer, context, continuation)] for context, continuation in requests]
                states = store.open(model, "bench") if cached else None  # reads the store's file
                return score_requests(model, encoded, pad_id, batch_size, frozen_states=states)  # one per group

            return run

        functions = {
            "imsm": ours(imsm_model),
            "imsm cached": ours(imsm_model, cached=True),
            "vanilla": ours(vanilla),
            "lm-eval hf": lambda: hf.loglikelihood(instances, disable_tqdm=True),
        }
        # Same adapter, same numbers: vanilla through our code must give lm-eval's log-likelihoods
        # (these first calls also warm the process up), and IMSM with the stored frozen states IMSM
        # without them.
        agreement = _largest_difference(functions["vanilla"](), [[ll] for ll, _ in functions["lm-eval hf"]()])
        uncached = functions["imsm"]()
        started = time.perf_counter()
        encoded = [[encode_pair(tokenizer, context, continuation)] for context, continuation in requests]
        add_frozen_states(imsm_model, encoded, pad_id, store.open(imsm_model, "bench"), batch_size)
        build_seconds = time.perf_counter() - started  # the first cell's extra: the frozen branch alone
        cached_difference = _largest_difference(functions["imsm cached"](), uncached)
        seconds = interleaved_medians(functions, repetitions, warmup=False)
    n = len(requests)
    result = {
        "model": model_name,
        "peft": peft,
        "dtype": dtype,
        "tasks": list(tasks),
        "items_per_task": limit,
        "requests": n,
        "batch_size": batch_size,
        "repetitions": repetitions,
        "vanilla_vs_lm_eval_max_abs_loglikelihood_difference": agreement,
        "imsm_cached_vs_uncached_max_abs_loglikelihood_difference": cached_difference,
        "frozen_states_build_seconds": build_seconds,
        "frozen_states_fingerprint_seconds": fingerprint_seconds,
        "seconds": seconds,
        "requests_per_s": {name: n / s for name, s in seconds.items()},
    }
    return {**result, **_ratios(seconds)}


def _ratios(seconds: dict[str, float]) -> dict[str, float]:
    """Throughput ratios (the inverse of the time ratios) of the variants against each other."""
    return {
        "imsm_over_lm_eval": seconds["lm-eval hf"] / seconds["imsm"],
        "vanilla_over_lm_eval": seconds["lm-eval hf"] / seconds["vanilla"],
        "imsm_cached_over_lm_eval": seconds["lm-eval hf"] / seconds["imsm cached"],
        "imsm_cached_over_vanilla": seconds["vanilla"] / seconds["imsm cached"],
        "imsm_cached_over_imsm": seconds["imsm"] / seconds["imsm cached"],
    }


def _largest_difference(readings, others) -> float:
    """The largest absolute difference between two runs' log-likelihoods of the same requests."""
    first = [ll for reading in readings for ll in reading.log_likelihoods]
    second = [ll for other in others for ll in (other.log_likelihoods if hasattr(other, "log_likelihoods") else other)]
    return max(abs(a - b) for a, b in zip(first, second, strict=True))
