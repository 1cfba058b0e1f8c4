"""How close two computations of the same numbers must be, from the dtype and the computation's depth.

The model tests run in fp32 on a CPU by default, and in bf16 or on CUDA when conftest's
IMSM_TEST_DTYPE / IMSM_TEST_DEVICE say so. Every float comparison of a model test takes its
tolerance from `tolerance` and every greedy decode compared with another way of computing it goes
through `assert_same_tokens_until_a_near_tie`, so one run covers every dtype without a test knowing
which it runs in.
"""

from __future__ import annotations

import torch

# The rounding budget of one "layer" of depth. A decoder layer chains about four rounded stages (a
# norm, attention, its output projection, the MLP). Each stage's output is rounded to the dtype,
# and each stage's reductions (dot products, sums) accumulate in fp32 whatever the dtype (CPU
# kernels and cuBLAS accumulate bf16 products in fp32; conftest pins that on CUDA). A rounding is
# off by at most half an epsilon, relative (round to nearest; a chain of n adds up to about n*u,
# Higham's gamma_n, u = eps/2), and two computations are compared: one epsilon of the dtype per
# stage. A sum of K products rounds K times; its error grows like sqrt(K) when the roundings are
# independent (K times in the worst case), and the kernels sum the tests' K = 32 to 128 in blocks
# of another order on each device: REDUCTION_ULPS epsilons of the accumulator per stage.
STAGES_PER_LAYER = 4
REDUCTION_ULPS = 4
# Measured on the model tests (CPU, 2026-12-06), relative to 1 + |expected|: the compared logits
# and log-probabilities differed by up to about 4 fp32 epsilons and 2 bf16 ones at depth 3, a
# decode's step logits, cached against recomputed, by up to 12 fp32 and 21 bf16 epsilons (GPT-2
# under the tests' decisive gate, which amplifies its inputs' rounding; the near-tie check's
# factor of two covers it). On an H100 in fp32 the fused logits of GPT-2 under that gate differed
# from an independent computation by more than 2e-5 (issue 30; not measured since).

# The depth of conftest's tiny two-layer models' logits: two decoder layers, plus one for the final
# norm, the fusion and the head (`model_depth` reads it off a model).
TINY_DEPTH = 3


def rounding_eps(dtype: torch.dtype | None = None) -> float:
    """The relative rounding step of values stored in `dtype` (the tests' default dtype when None).

    fp32 matrix products on CUDA with TF32 allowed round their inputs to 10 mantissa bits, so
    there it is 2**-10, not fp32's 2**-23. conftest pins full fp32 for the model tests; this
    matters only for a run that turns TF32 back on, which then gets a tolerance to match instead of
    failures that say nothing about the library.
    """
    dtype = dtype or torch.get_default_dtype()
    if dtype == torch.float32 and _on_cuda() and _tf32_allowed():
        return 2.0**-10
    return torch.finfo(dtype).eps


def accumulation_eps(dtype: torch.dtype | None = None) -> float:
    """The relative rounding step of the sums inside reductions: fp32 for fp32 and the half
    types, unless cuBLAS may reduce bf16/fp16 products in their own precision (its default;
    conftest turns it off), then the dtype's own; fp64 for fp64."""
    dtype = dtype or torch.get_default_dtype()
    if dtype == torch.float64:
        return torch.finfo(torch.float64).eps
    if dtype in (torch.bfloat16, torch.float16) and _on_cuda() and _reduced_precision_reduction(dtype):
        return torch.finfo(dtype).eps
    return rounding_eps(torch.float32)


def _on_cuda() -> bool:
    return torch.get_default_device().type == "cuda"


def _tf32_allowed() -> bool:
    return torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"


def _reduced_precision_reduction(dtype: torch.dtype) -> bool:
    matmul = torch.backends.cuda.matmul
    if dtype == torch.bfloat16:
        return bool(matmul.allow_bf16_reduced_precision_reduction)
    return bool(matmul.allow_fp16_reduced_precision_reduction)


def tolerance(depth: int = TINY_DEPTH, dtype: torch.dtype | None = None) -> dict[str, float]:
    """rtol and atol for comparing two computations of the same values, `depth` layers deep.

    Both are depth * STAGES_PER_LAYER * (rounding_eps + REDUCTION_ULPS * accumulation_eps): the
    values pass when |actual - expected| <= bound * (1 + |expected|), so large values are held to
    a relative bound and values near zero to an absolute one. In fp32 that is 20 epsilons per
    layer: 7.2e-6 at depth 3, so 2.2e-5 at a logit of 2, where the fp32-only tests allowed 2e-5
    whatever the logit. In bf16 (summed in fp32) it is about 4 bf16 epsilons, 0.031, per layer.
    Pass as keywords: `assert_close(a, b, **tolerance(3))`.

    Args:
        depth: Layers the compared values went through separately in the two computations
            (TINY_DEPTH for a tiny model's logits; 1 for one layer or the gate alone).
        dtype: The dtype the computation rounds to; the tests' default dtype when None.
    """
    bound = depth * STAGES_PER_LAYER * (rounding_eps(dtype) + REDUCTION_ULPS * accumulation_eps(dtype))
    return {"rtol": bound, "atol": bound}


def greedy_step_logits(model, sequences: torch.Tensor, attention_mask: torch.Tensor | None, prompt_length: int):
    """The fused logits that chose each new token of `sequences` [B, T + N], from one forward of
    the whole sequence with the prompt as query (what naive recomputation computes step by step)
    -> [B, N, V] in fp32."""
    B, total = sequences.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, prompt_length, dtype=torch.long)
    new = total - prompt_length
    mask = torch.cat([attention_mask, attention_mask.new_ones(B, new)], dim=1)  # new tokens are attended
    query_mask = torch.cat([attention_mask.bool(), torch.zeros(B, new, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        logits = model(sequences, attention_mask=mask, query_mask=query_mask).logits  # [B, T + N, V]
    return logits[:, prompt_length - 1 : -1].float()


def model_depth(model) -> int:
    """The depth of an IMSM model's logits: its decoder layers, plus one for norm, fusion and head."""
    return len(model.decoder_layers) + 1


def assert_same_tokens_until_a_near_tie(
    actual: torch.Tensor, expected: torch.Tensor, step_logits: torch.Tensor, depth: int = TINY_DEPTH
) -> None:
    """Greedy tokens [B, N] of two computations that round differently (a cache against full
    recomputation, a padded batch against one prompt) agree up to the first step where the
    expected decode's two best logits are closer than the two computations can tell apart; from
    there on either may take the other token, and nothing after it is compared.

    Args:
        actual, expected: The new tokens of the two decodes, [B, N].
        step_logits: [B, N, V], the logits that chose `expected`, recomputed (`greedy_step_logits`).
        depth: The logits' depth, for `tolerance`.
    """
    assert actual.shape == expected.shape, f"{tuple(actual.shape)} != {tuple(expected.shape)}"
    bound = tolerance(depth)
    top = step_logits.topk(2, dim=-1).values  # [B, N, 2]
    # Each logit may be off by atol + rtol * |logit| in either computation: a gap below twice that
    # can flip the argmax.
    near_tie = top[..., 0] - top[..., 1] < 2 * (bound["atol"] + bound["rtol"] * top[..., 0].abs())  # [B, N]
    for row in range(actual.shape[0]):
        for step in range(actual.shape[1]):
            if near_tie[row, step]:
                break
            got, wanted = int(actual[row, step]), int(expected[row, step])
            assert got == wanted, (
                f"row {row}, new token {step}: {got} != {wanted}, and the expected decode's top-2 logit gap "
                f"{float(top[row, step, 0] - top[row, step, 1]):.3g} is no near-tie"
            )


def assert_decodes_agree_until_a_near_tie(
    model, actual: torch.Tensor, expected: torch.Tensor, attention_mask: torch.Tensor | None, prompt_length: int
) -> None:
    """`assert_same_tokens_until_a_near_tie` for two decodes [B, T + N] by `model` of the same
    prompts (`attention_mask` [B, T], None for unpadded ones), the expected decode's logits
    recomputed in one forward."""
    assert actual.shape == expected.shape, f"{tuple(actual.shape)} != {tuple(expected.shape)}"
    T = prompt_length
    assert torch.equal(actual[:, :T], expected[:, :T])
    logits = greedy_step_logits(model, expected, attention_mask, T)
    assert_same_tokens_until_a_near_tie(actual[:, T:], expected[:, T:], logits, model_depth(model))
