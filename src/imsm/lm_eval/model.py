"""The lm-evaluation-harness model type `imsm`: any base model, peft adapter or IMSM adapter.

lm-eval's own `TemplateLM` turns requests into token ids, as its `hf` model does; what is specific
to IMSM is where the tokens go: every scored request runs through `imsm.evaluation.scoring.score_requests`
(one prefill of each context for both branches, the context as IMSM's query memory) and every
generation through `IMSMModel.generate`.
"""

from __future__ import annotations

import logging

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from imsm.cli.model_options import ModelOptions
from imsm.errors import IMSMError
from imsm.evaluation.frozen_states import FrozenStateStore
from imsm.evaluation.scoring import prefix_token_id, score_requests
from imsm.generate import left_padded
from imsm.model.variant import load_evaluated_model
from imsm.version import __version__

logger = logging.getLogger(__name__)

# `fusion` left out: the adapter's own (a plain peft adapter's is "none").
SAVED_FUSION = "saved"
# What generate_until understands; anything else in a task's gen_kwargs is refused.
GREEDY_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature"}


def load_for_evaluation(options: ModelOptions):
    """The model to evaluate, as `imsm eval` loads it (`imsm.model.variant.load_evaluated_model`).

    Returns:
        (IMSMModel in eval mode, tokenizer).
    """
    return load_evaluated_model(options)


def _resolve_device(device: str | None) -> str | None:
    # lm-eval's command line asks for "cuda:0" unless told otherwise; like its `hf` model, fall
    # back to the CPU where there is no GPU rather than fail.
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("device %s asked for but CUDA is not available; using the CPU", device)
        return "cpu"
    return device


@register_model("imsm")
class IMSMLM(TemplateLM):
    """lm-eval's view of an `IMSMModel`.

    Args (lm-eval's `--model_args`):
        pretrained: An embedded model name (`smollm2-135m`), a local model directory, or a
            Hugging Face id in the local cache, as `imsm --model` takes it.
        adapter: A directory written by `save_pretrained`, or a plain peft adapter directory.
        fusion: Replaces the adapter's fusion: `none` (vanilla PEFT), `mean`, or the adapter's own
            `imsm` / `no-query`. Left out, the adapter's own. lm-eval's argument parser turns
            the word `none` into None, so None means `none` here.
        adapter_scale: Scales the adapter's change (0 = the base model, 1 = as trained).
        reduce_intruders: peft's intruder-dimension reduction of a vanilla LoRA adapter, keeping this
            share of each intruder direction (`imsm eval --reduce-intruders`); left out, none.
        dtype: auto, fp32, bf16 or fp16 (also float32, bfloat16, float16).
        device: cpu or cuda[:N]; default CUDA if available.
        batch_size: Contexts scored, or prompts decoded, together (an integer).
        max_length: The model's window in tokens; default from its config, as lm-eval's `hf`.
        trust_remote_code: Passed to transformers.
        frozen_states: A directory where the frozen branch's states for log-likelihood requests
            are kept and reused by later runs on the same base model (`imsm eval --frozen-states`).
    """

    def __init__(
        self,
        pretrained: str = "smollm2-135m",
        adapter: str | None = None,
        fusion: str | None = SAVED_FUSION,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str | None = 8,
        max_batch_size: int | None = None,  # lm-eval passes it for batch_size=auto, which is refused
        max_length: int | None = None,
        trust_remote_code: bool = False,
        adapter_scale: float = 1.0,
        frozen_states: str | None = None,
        reduce_intruders: float | None = None,
    ) -> None:
        super().__init__()
        try:
            self.batch_size = 8 if batch_size is None else int(batch_size)
        except ValueError:
            raise IMSMError(
                f"batch_size must be an integer for the imsm model type, got {batch_size!r}; "
                "pass --batch_size N (automatic batch sizes are not supported)"
            ) from None
        if self.batch_size < 1:
            raise IMSMError(f"batch_size must be at least 1, got {self.batch_size}")
        fusion = "none" if fusion is None else str(fusion)
        options = ModelOptions(
            model=str(pretrained),
            adapter=adapter,
            fusion=None if fusion == SAVED_FUSION else fusion,
            adapter_scale=float(adapter_scale),
            reduce_intruders=None if reduce_intruders is None else float(reduce_intruders),
            dtype=dtype,
            device=_resolve_device(device),
            trust_remote_code=trust_remote_code,
        )
        self.model, self.tokenizer = load_for_evaluation(options)
        self._device = self.model.device
        self.pretrained, self.adapter = str(pretrained), adapter
        self._max_length = max_length
        self.pad_token_id = self.tokenizer.pad_token_id
        # `frozen_states=DIR`: the frozen branch's states for log-likelihood requests, kept and reused
        # by every later run on the same base model (imsm.evaluation.frozen_states).
        self.frozen_states = FrozenStateStore(frozen_states) if frozen_states else None

    # ----------------------------------------------------------------------------------------
    # What TemplateLM and lm-eval's evaluator read.

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return prefix_token_id(self.tokenizer)  # BOS, else EOS, as lm-eval's `hf` model

    @property
    def max_length(self) -> int:
        if self._max_length:
            return int(self._max_length)
        return resolve_max_length(self.model.config, self.tokenizer)

    @property
    def max_gen_toks(self) -> int:
        return 256  # lm-eval's `hf` default, used when a task does not say

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # As lm-eval's `hf` model: the tokenizer's own special tokens, unless asked otherwise or
        # the text already starts with the prefix token (a chat template's BOS).
        if add_special_tokens is None and string.startswith(self.tokenizer.decode([self.prefix_token_id])):
            add_special_tokens = False
        if add_special_tokens is None:
            return self.tokenizer.encode(string)
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def get_model_info(self) -> dict:
        """How the model was made, for lm-eval's results `config`."""
        return {
            "imsm_version": __version__,
            "model": self.pretrained,
            "adapter": self.adapter,
            "fusion": self.model.fusion,
            "model_dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
        }

    # ----------------------------------------------------------------------------------------
    # The three request types.

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(key, context ids, continuation ids) -> (log-likelihood, is_greedy); the context is the query memory.

        lm-eval's `TemplateLM.loglikelihood` builds the ids (empty context -> the prefix token).
        """
        with tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests") as progress:
            scored = score_requests(
                self.model,
                [[(context, continuation)] for _, context, continuation in requests],  # each request alone
                self.pad_token_id,
                batch_size=self.batch_size,
                max_length=self.max_length,
                on_batch_done=progress.update,
                frozen_states=None if self.frozen_states is None else self.frozen_states.open(self.model, "lm_eval"),
            )
        answers = [(reading.log_likelihoods[0], reading.is_greedy[0]) for reading in scored]
        for (key, _, _), answer in zip(requests, answers, strict=True):
            if key is not None:  # rolling windows have no (context, continuation) key
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in lm-eval's disjoint windows of the model's length.

        Each window is scored as (its context, its tokens) with the context as the query memory:
        the prefix token alone for the first window, then the tokens lm-eval keeps before each
        later window (one token when the window is full). The query memory never holds a token
        being scored, so the gate cannot read what it predicts.
        """
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (log_likelihood, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm), strict=True):
            totals[owner] += log_likelihood
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy answers through `IMSMModel.generate`, cut at the first `until` string.

        Each request decodes up to its `max_gen_toks` tokens (or the model's EOS), then the text
        is cut as lm-eval's `hf` model cuts it; greedy decoding makes that the same answer as
        stopping early. Only greedy decoding is supported: other gen_kwargs are refused.
        """
        # lm-eval's Collator: requests with the same gen_kwargs together, longest prompts first.
        batches = Collator(
            [request.args for request in requests],
            sort_fn=lambda args: (-len(self.tok_encode(args[0])), args[0]),
            group_by="gen_kwargs",
            group_fn=lambda args: args[1],
        )
        eos_text = self.tokenizer.decode([self.eot_token_id])
        answers = []
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        for batch in batches.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*batch, strict=True)
            kwargs = dict(normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen_toks = kwargs.pop("max_gen_toks")
            unsupported = sorted(set(kwargs) - GREEDY_KWARGS)
            if kwargs.get("do_sample") or unsupported:
                asked = {key: kwargs[key] for key in unsupported or ["do_sample"]}
                raise IMSMError(
                    f"the imsm model type decodes greedily; gen_kwargs {asked} are not supported "
                    "(sampling is not implemented yet): drop them, or set do_sample=false"
                )
            room = self.max_length - max_gen_toks  # the prompt is cut from the left to leave room
            if room < 1:
                raise IMSMError(f"max_gen_toks={max_gen_toks} leaves no room for a prompt in {self.max_length} tokens")
            prompts = [self.tok_encode(context)[-room:] for context in contexts]
            input_ids, attention_mask = left_padded(prompts, self.pad_token_id)
            sequences = self.model.generate(
                input_ids.to(self.device),
                attention_mask.to(self.device),
                max_new_tokens=max_gen_toks,
                pad_token_id=self.pad_token_id,
            )
            for context, tokens in zip(contexts, sequences[:, input_ids.shape[1] :].tolist(), strict=True):
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                answer = postprocess_generated_text(text, until, think_end_token=None)
                answers.append(answer)
                self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), answer)
                progress.update(1)
        progress.close()
        return batches.get_original(answers)
