"""Benchmarks that run IMSM and plain peft on the same model, inputs and machine, in one run."""
