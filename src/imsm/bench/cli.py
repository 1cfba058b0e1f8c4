"""`imsm bench ...`: the command-line side of the benchmarks."""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

from imsm.bench.output import write_json


def add_bench_parser(commands, positive_int) -> None:
    bench = commands.add_parser(
        "bench",
        help="speed and memory of IMSM against plain peft, in one run",
        description="Run IMSM and plain peft on the same model, adapter, inputs and machine; report medians "
        "and the IMSM / vanilla ratio.",
    )
    modes = bench.add_subparsers(dest="mode", required=True, metavar="MODE")
    train = modes.add_parser(
        "train",
        help="training throughput (tokens/s) and peak memory over a full run",
        description="Train vanilla peft and IMSM over the same examples and epochs, each in a fresh process.",
    )
    train.add_argument("--model", default="smollm2-135m", help="model (smollm2-135m)")
    train.add_argument("--peft", default="lora", help="peft method (lora)")
    train.add_argument(
        "--task", help="training task: registry name or spec file (mrpc with a data directory, else the demo's task)"
    )
    train.add_argument("--data-dir", help="data directory (else $IMSM_DATA_DIR)")
    train.add_argument("--limit", type=positive_int, default=64, help="training examples (64)")
    train.add_argument("--epochs", type=positive_int, default=3, help="epochs (3)")
    train.add_argument("--batch-size", type=positive_int, default=16, help="examples per optimizer step (16)")
    train.add_argument("--micro-batch-size", type=positive_int, default=8, help="examples per forward pass (8)")
    train.add_argument("--dtype", default="auto", help="auto, bf16 or fp32")
    train.add_argument("--repeats", type=positive_int, default=1, help="runs of each variant, alternating (1)")
    train.add_argument("--output", type=Path, help="write the results JSON here")
    train.set_defaults(handler=cmd_bench_train)

    decode = modes.add_parser(
        "decode",
        help="greedy decoding tokens/s: IMSM, peft's generate, merged LoRA, the naive siamese decoder",
        description="Decode the same chat prompts greedily with IMSM and with plain peft (EOS ignored).",
    )
    _common(decode, positive_int)
    decode.add_argument("--batch-size", type=positive_int, default=1, help="prompts decoded together (1)")
    decode.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens per prompt (128)")
    decode.add_argument("--prompt-repeat", type=positive_int, default=1, help="repeat each prompt k times (1)")
    decode.add_argument("--naive-tokens", type=positive_int, default=16, help="tokens for the naive decoder (16)")
    decode.add_argument("--skip", default="", help="comma-separated: merged, doubled, naive (skip those)")
    decode.add_argument(
        "--random-weights",
        action="store_true",
        help="--model is a config.json (or its directory): build that architecture with random weights "
        "(speed does not depend on them), e.g. configs/architectures/llama3-8b.json",
    )
    decode.set_defaults(handler=cmd_bench_decode)

    evaluate = modes.add_parser(
        "eval",
        help="evaluation examples/s through imsm eval's code: IMSM against the same adapter without it",
        description="Evaluate the same examples with IMSM and with vanilla PEFT (the same adapter).",
    )
    _common(evaluate, positive_int)
    evaluate.add_argument("--task", default="mrpc", help="task (mrpc)")
    evaluate.add_argument("--data-dir", help="data directory (else $IMSM_DATA_DIR)")
    evaluate.add_argument("--limit", type=positive_int, default=200, help="examples (200)")
    evaluate.add_argument("--batch-size", type=positive_int, default=16, help="evaluation batch size (16)")
    evaluate.add_argument("--no-likelihood", action="store_true", help="generation only")
    evaluate.add_argument(
        "--no-doubled", action="store_true", help="skip the ceiling run (vanilla on every example twice)"
    )
    evaluate.set_defaults(handler=cmd_bench_eval)


def _common(parser, positive_int) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="model (smollm2-135m)")
    parser.add_argument("--peft", default="lora", help="peft method, paper defaults and target modules (lora)")
    parser.add_argument("--dtype", default="auto", help="auto, bf16 or fp32")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repetitions, medians (3)")
    parser.add_argument("--output", type=Path, help="write the results JSON here")


def _finish(args, kind: str, result: dict) -> int:
    from imsm import __version__
    from imsm.bench.machine import describe_machine

    payload = {
        "benchmark": kind,
        "imsm_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        **result,
    }
    print(json.dumps(payload, indent=2))
    if args.output:
        write_json(args.output, payload)
        print(f"results: {args.output}")
    return 0


def cmd_bench_decode(args: argparse.Namespace) -> int:
    from imsm.bench.decode import bench_decode
    from imsm.errors import IMSMError

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    optional = ("merged", "doubled", "naive")
    unknown = skip - set(optional)
    if unknown:
        raise IMSMError(f"--skip takes any of {', '.join(optional)}, got {sorted(unknown)}")
    result = bench_decode(
        args.model,
        args.peft,
        args.dtype,
        args.batch_size,
        args.max_new_tokens,
        args.repeats,
        args.naive_tokens,
        args.prompt_repeat,
        include=tuple(x for x in optional if x not in skip),
        random_weights=args.random_weights,
    )
    return _finish(args, "decode", result)


def cmd_bench_eval(args: argparse.Namespace) -> int:
    from imsm.bench.eval import bench_eval

    result = bench_eval(
        args.model,
        args.peft,
        args.dtype,
        args.task,
        args.data_dir,
        args.limit,
        args.batch_size,
        args.repeats,
        likelihood=not args.no_likelihood,
        doubled=not args.no_doubled,
    )
    return _finish(args, "eval", result)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from imsm import __version__
    from imsm.bench.machine import describe_machine
    from imsm.bench.train import bench_train
    from imsm.data import resolve_data_dir
    from imsm.demo_data import write_demo_tasks

    data_dir = resolve_data_dir(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="imsm-bench-data-") as generated:
        task = args.task
        if task is None:
            task = "mrpc" if data_dir else str(write_demo_tasks(Path(generated), args.limit, 1, 1)["train"])
        config = {
            "task": task,
            "model": args.model,
            "peft": args.peft,
            "epochs": args.epochs,
            "limit": args.limit,
            "data_dir": str(data_dir) if data_dir else None,
            "batch_size": args.batch_size,
            "micro_batch_size": args.micro_batch_size,
            "dtype": args.dtype,
        }
        print(f"imsm bench train: {args.peft} on {Path(task).stem}, {args.limit} examples x {args.epochs} epochs")

        def report(name, repeat, result):
            print(
                f"  {name:<8} run {repeat + 1}/{args.repeats}: {result['tokens_per_s']:.1f} tokens/s, "
                f"{result['seconds']:.1f} s (frozen memories {result['frozen_cache_seconds']:.1f} s), "
                f"peak {result['peak_rss_mib']:.0f} MiB (in training {result['training_peak_rss_mib'] or 0:.0f} MiB)",
                flush=True,
            )

        summary = bench_train(config, args.repeats, on_result=report)
    training_ratio = summary.get("training_peak_memory_ratio")
    print(
        f"IMSM / vanilla: throughput {summary['throughput_ratio']:.3f}, peak memory {summary['peak_memory_ratio']:.3f}"
        + (f", peak memory in training {training_ratio:.3f}" if training_ratio else "")
    )
    if args.output:
        payload = {
            "benchmark": "train",
            "imsm_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": describe_machine(),
            "settings": {**config, "task": Path(config["task"]).stem, "repeats": args.repeats},
            **summary,
        }
        write_json(args.output, payload)
        print(f"results: {args.output}")
    return 0
