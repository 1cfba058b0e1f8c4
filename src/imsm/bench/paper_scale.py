"""The paper-scale figures of one architecture (issue 30): IMSM over vanilla peft in training
tokens/s, training peak memory and decoding tokens/s at batch 1 and 8, from the three result
files of `imsm bench train` and `imsm bench decode` made on one machine.

    python -m imsm.bench.paper_scale --train train.json --decode-b1 decode_b1.json \\
        --decode-b8 decode_b8.json --output docs/results/perf/gpu/paper_scale.json

A file that lacks a measurement, or that was made under other settings than the others (another
architecture, dtype, adapter, or without random weights or activation checkpointing), is refused
with a line naming the file and what is wrong; nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from imsm.bench.output import write_json
from imsm.errors import IMSMError
from imsm.provenance import now

# Issue 30's goals: IMSM / vanilla, at least (throughput) or at most (memory).
GOALS = {
    "train_tokens_per_s_ratio": (">=", 0.85),
    "train_peak_memory_ratio": ("<=", 1.15),
    "decode_b1_ratio": (">=", 0.90),
    "decode_b8_ratio": (">=", 0.90),
}
# What the figures keep of each decoding result, beside its ratio.
DECODE_DETAILS = (
    "prompt_tokens",
    "max_new_tokens",
    "repetitions",
    "imsm_tokens_per_s",
    "vanilla_tokens_per_s",
    "doubled_batch_ceiling",
)


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise IMSMError(f"{what} {str(path)!r} does not exist; run the bench that writes it first") from None
    except (OSError, ValueError) as error:
        raise IMSMError(f"{what} {str(path)!r} is not a readable JSON file ({error}); run its bench again") from None
    if not isinstance(payload, dict):
        raise IMSMError(f"{what} {str(path)!r} does not hold a bench result; run its bench again")
    return payload


def _need(payload: dict[str, Any], key: str, path: Path, what: str) -> Any:
    value = payload.get(key)
    if value is None:
        raise IMSMError(
            f"{what} {str(path)!r} lacks {key!r}: that measurement was not made (wrong bench, or a run "
            "without a GPU where GPU memory is asked for); run the bench again with the paper-scale settings"
        )
    return value


def _check_train(train: dict[str, Any], path: Path) -> None:
    if train.get("benchmark") != "train":
        raise IMSMError(f"--train {str(path)!r} is not an `imsm bench train` result; give that file")
    settings = train.get("settings") or {}
    for key in ("random_weights", "gradient_checkpointing"):
        if not settings.get(key):
            raise IMSMError(f"--train {str(path)!r} was made without --{key.replace('_', '-')}; run it again with it")
    for name, runs in _need(train, "runs", path, "--train").items():
        for run in runs:
            if not run.get("activation_checkpointing"):
                raise IMSMError(f"--train {str(path)!r}: the {name} variant trained without activation checkpointing")


def _check_decode(decode: dict[str, Any], path: Path, what: str, batch_size: int, train: dict[str, Any]) -> None:
    if decode.get("benchmark") != "decode":
        raise IMSMError(f"{what} {str(path)!r} is not an `imsm bench decode` result; give that file")
    if decode.get("batch_size") != batch_size:
        raise IMSMError(f"{what} {str(path)!r} decoded at batch {decode.get('batch_size')}, not {batch_size}")
    if not decode.get("random_weights"):
        raise IMSMError(f"{what} {str(path)!r} was made without --random-weights; run it again with it")
    settings = train["settings"]
    if Path(str(decode.get("model"))).name != Path(str(settings["model"])).name:
        raise IMSMError(
            f"{what} {str(path)!r} decoded {decode.get('model')!r} but --train trained {settings['model']!r}; "
            "give the files of one architecture"
        )
    if decode.get("peft") != settings["peft"]:
        raise IMSMError(f"{what} {str(path)!r} used {decode.get('peft')!r}, --train {settings['peft']!r}")
    train_dtype = train["runs"]["imsm"][0].get("dtype")
    if decode.get("dtype") != train_dtype:
        raise IMSMError(f"{what} {str(path)!r} decoded in {decode.get('dtype')}, --train trained in {train_dtype}")
    if decode.get("machine") != train.get("machine"):
        raise IMSMError(
            f"{what} {str(path)!r} ran on {decode.get('machine')!r}, --train on {train.get('machine')!r}; "
            "the ratios must come from one machine"
        )


def paper_scale_figures(train_path: Path, decode_b1_path: Path, decode_b8_path: Path) -> dict[str, Any]:
    """The issue's figures and what they rest on, from the three bench result files.

    Raises:
        IMSMError: a file is missing, is not the bench result it should be, lacks a measurement,
            or was made under settings that differ from the others'.
    """
    train = _read(train_path, "--train")
    _check_train(train, train_path)
    decode_b1 = _read(decode_b1_path, "--decode-b1")
    decode_b8 = _read(decode_b8_path, "--decode-b8")
    _check_decode(decode_b1, decode_b1_path, "--decode-b1", 1, train)
    _check_decode(decode_b8, decode_b8_path, "--decode-b8", 8, train)

    gpu = "cuda_peak_memory_ratio" in train
    if gpu:
        memory_ratio, memory_key = train["cuda_peak_memory_ratio"], "peak_cuda_mib"
        memory_measure = "torch.cuda.max_memory_allocated over each run's process (a fresh one per run)"
    else:  # a CPU dry run: the peak resident set from the start of training
        memory_ratio = _need(train, "training_peak_memory_ratio", train_path, "--train")
        memory_key = "training_peak_rss_mib"
        memory_measure = "peak resident set from the start of training (CPU: no GPU memory to measure)"
    settings = train["settings"]
    first = train["runs"]["imsm"][0]
    figures: dict[str, Any] = {
        "machine": train["machine"],
        "model_shape": Path(str(settings["model"])).name.removesuffix(".json"),
        "train_tokens_per_s_ratio": _need(train, "throughput_ratio", train_path, "--train"),
        "train_peak_memory_ratio": memory_ratio,
        "decode_b1_ratio": _need(decode_b1, "ratio", decode_b1_path, "--decode-b1"),
        "decode_b8_ratio": _need(decode_b8, "ratio", decode_b8_path, "--decode-b8"),
    }
    goals = {key: f"{sign} {value}" for key, (sign, value) in GOALS.items()}
    met = None
    if gpu:  # the goals are GPU goals: a CPU dry run meets or misses none of them
        met = {
            key: figures[key] >= value if sign == ">=" else figures[key] <= value
            for key, (sign, value) in GOALS.items()
        }
    return {
        **figures,
        "goals": goals,
        "met": met,
        "device": "cuda" if gpu else "cpu (dry run, not the paper-scale measurement)",
        "created": now(),
        "versions": train.get("versions"),
        "parameters": first.get("total_parameters"),
        "dtype": first.get("dtype"),
        "peft": settings["peft"],
        "train": {
            "settings": settings,
            "vanilla_tokens_per_s": train["vanilla_tokens_per_s"],
            "imsm_tokens_per_s": train["imsm_tokens_per_s"],
            "memory_measure": memory_measure,
            "vanilla_peak_gib": train[f"vanilla_{memory_key}"] / 1024,
            "imsm_peak_gib": train[f"imsm_{memory_key}"] / 1024,
            # What the model alone holds (weights, adapter, gate): the peaks' common floor.
            "vanilla_model_gib": train["vanilla_model_cuda_mib"] / 1024 if gpu else None,
            "imsm_model_gib": train["imsm_model_cuda_mib"] / 1024 if gpu else None,
        },
        "decode": {
            name: {key: payload.get(key) for key in DECODE_DETAILS}
            for name, payload in (("b1", decode_b1), ("b8", decode_b8))
        },
        "files": {
            "train": Path(train_path).name,
            "decode_b1": Path(decode_b1_path).name,
            "decode_b8": Path(decode_b8_path).name,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imsm.bench.paper_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="`imsm bench train --output` file")
    parser.add_argument("--decode-b1", type=Path, required=True, help="`imsm bench decode --batch-size 1` file")
    parser.add_argument("--decode-b8", type=Path, required=True, help="`imsm bench decode --batch-size 8` file")
    parser.add_argument("--output", type=Path, required=True, help="where to write the figures (JSON)")
    args = parser.parse_args(argv)
    try:
        figures = paper_scale_figures(args.train, args.decode_b1, args.decode_b8)
    except IMSMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json(args.output, figures)
    print(json.dumps({key: figures[key] for key in ("machine", "model_shape", *GOALS, "met")}, indent=2))
    print(f"figures: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
