"""Timing helpers shared by the benchmarks: warm-up first, then the median of repetitions."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(function: Callable[[], object], repetitions: int, warmup: bool = True) -> float:
    """Median wall time of `function` over `repetitions` calls, after one untimed call."""
    if warmup:
        function()
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    functions: dict[str, Callable[[], object]], repetitions: int, warmup: bool = True
) -> dict[str, float]:
    """Median seconds per function, calling them in turn each round so drifts of a shared machine
    (other jobs, clock changes) hit every variant alike; one warm-up round first unless the
    caller warmed up already."""
    for function in functions.values() if warmup else ():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repetitions):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
