"""Evaluation: `run.evaluate_task` runs any task through one skeleton, and each `kind.TaskKind`
(`generation`, `choice`, `drift`) supplies what differs; `scoring` reads log-likelihoods as
lm-evaluation-harness does, `journal` lets an interrupted run resume, `results` writes what came
out, and `gate_inspection` reads a trained gate."""
