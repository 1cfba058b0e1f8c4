"""How decoding cost grows with batch size, prompt length and output length: IMSM against peft.

    python benchmarks/decode_scaling.py --dtype fp32 --output docs/results/perf/decode_scaling.json \
        --plot docs/results/perf/decode_scaling.png
    python benchmarks/decode_scaling.py --replot docs/results/perf/decode_scaling.json --plot OUT.png

One model and one adapter (LoRA r=16, trained-looking random B), three sweeps around a base point
(batch 1, the 41-token chat prompt, 32 new tokens), each varying one axis. Every point times IMSM's
cached decoder, peft's own `generate` on the same adapter, and peft's `generate` on the doubled
batch (the ceiling of the ratio in this design), interleaved, medians after a warm-up. Reported per
point: milliseconds per generated token per row for IMSM and vanilla, and the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from imsm.bench.machine import describe_machine

from imsm.bench.decode import adapted_model, time_decoders
from imsm.bench.output import write_json

SWEEPS = {
    "batch_size": [1, 2, 4, 8, 16],
    "prompt_repeat": [1, 4, 16, 32],
    "max_new_tokens": [16, 32, 64, 128, 256],
}
BASE = {"batch_size": 1, "prompt_repeat": 1, "max_new_tokens": 32}


def sweep(model, tokenizer, repetitions: int, on_point=print) -> list[dict]:
    points = []
    for axis, values in SWEEPS.items():
        for value in values:
            shape = {**BASE, axis: value}
            measured = time_decoders(
                model,
                tokenizer,
                shape["batch_size"],
                shape["max_new_tokens"],
                repetitions,
                prompt_repeat=shape["prompt_repeat"],
                include=("doubled",),
            )
            point = {"axis": axis, "value": value, **measured}
            points.append(point)
            on_point(
                f"{axis}={value}: prompt {point['prompt_tokens']} tokens, IMSM {point['imsm_tokens_per_s']:.1f} "
                f"tok/s, vanilla {point['vanilla_tokens_per_s']:.1f}, ratio {point['ratio']:.3f}, "
                f"ceiling {point['doubled_batch_ceiling']:.3f}"
            )
    return points


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "batch_size": "batch size (rows)",
        "prompt_repeat": "prompt length (tokens)",
        "max_new_tokens": "new tokens per row",
    }
    figure, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex="col")
    for column, axis in enumerate(SWEEPS):
        rows = [p for p in points if p["axis"] == axis]
        x = [p["prompt_tokens"] if axis == "prompt_repeat" else p["value"] for p in rows]
        cost = axes[0][column]
        # Milliseconds per generated token of one row: the cost a user waits for.
        for key, name in (("imsm_tokens_per_s", "IMSM"), ("vanilla_tokens_per_s", "peft (vanilla)")):
            cost.plot(x, [1000 * p["batch_size"] / p[key] for p in rows], marker="o", label=name)
        cost.set_ylabel("ms per step (time / new tokens)" if column == 0 else "")
        cost.set_xscale("log", base=2)
        cost.grid(alpha=0.3)
        ratio = axes[1][column]
        ratio.plot(x, [p["ratio"] for p in rows], marker="o", label="IMSM / vanilla")
        ratio.plot(
            x, [p["doubled_batch_ceiling"] for p in rows], marker="x", linestyle="--", label="doubled-batch ceiling"
        )
        ratio.set_ylim(0, max(1.05, *(p["ratio"] + 0.05 for p in rows)))
        ratio.set_xlabel(labels[axis])
        ratio.set_ylabel("throughput ratio" if column == 0 else "")
        ratio.grid(alpha=0.3)
    axes[0][0].legend()
    axes[1][0].legend(loc="lower left")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--peft", default="lora")
    parser.add_argument("--dtype", default="auto", help="auto, bf16 or fp32")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions per point (2)")
    parser.add_argument("--output", type=Path, help="results JSON")
    parser.add_argument("--plot", type=Path, help="PNG of cost and ratio against each axis")
    parser.add_argument("--replot", type=Path, help="only redraw --plot from this results JSON")
    args = parser.parse_args()
    if args.replot:
        if not args.plot:
            parser.error("--replot needs --plot PNG")
        payload = json.loads(args.replot.read_text())
        title = f"{payload['model']}, {payload['peft']}, {payload['dtype']}: {payload['machine']}"
        plot(payload["points"], args.plot, title)
        return

    model, tokenizer = adapted_model(args.model, args.dtype, args.peft)
    points = sweep(model, tokenizer, args.repeats)
    payload = {
        "benchmark": "decode_scaling",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "model": args.model,
        "peft": args.peft,
        "dtype": points[0]["dtype"],
        "base_point": BASE,
        "points": points,
    }
    if args.output:
        write_json(args.output, payload)
    if args.plot:
        plot(points, args.plot, f"{args.model}, {args.peft}, {payload['dtype']}: {payload['machine']}")


if __name__ == "__main__":
    main()
