"""Drift from the base model on plain text: how far fine-tuning moved the model's distribution.

Each document is read teacher-forced as [prefix token] + context + text (no chat template; the
prefix is the BOS token, else EOS, as lm-eval puts before text with an empty context). Every
text token is scored twice at the position that predicts it: its negative log-likelihood under
the model, and the KL divergence KL(p_base || p_model) over the whole vocabulary, where p_base is
the base model's distribution. For IMSM and for any peft adapter the base model is the frozen
branch (the adapter bypassed, through the frozen head), so it costs one more branch, never a
second model, and nothing once a frozen-state store (`imsm.evaluation.frozen_states`) holds the
document; the base model itself has KL 0 by definition and runs one branch only. The query
memory (eq. 3) is the tokens before the text: the prefix token and the context. Task metrics are
token-weighted means over the corpus, with standard errors over documents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from imsm.errors import IMSMError
from imsm.evaluation.frozen_states import TaskStates, state_key, uses_frozen_states
from imsm.evaluation.kind import TaskKind
from imsm.evaluation.scoring import prefix_token_id, right_padded
from imsm.model.gate import masked_mean
from imsm.model.siamese import IMSMModel

DEFAULT_MAX_LENGTH = 1024
# Bumped when the journal's rows change meaning, so an older journal is started afresh.
JOURNAL_FORMAT = 1
# Logits are built for at most this many (position x vocabulary) entries at once (64 MiB in fp32).
CHUNK_ELEMENTS = 1 << 24


@dataclass
class DocumentDrift:
    """What scoring one document gave.

    Attributes:
        tokens: How many text tokens were scored.
        nll: Mean negative log-likelihood per text token under the model (nats).
        kl: Mean KL(p_base || p_model) per text token (nats); 0.0 for the base model itself.
        frozen_weight: The gate's mean weight on the frozen branch over the text positions and
            features; None without a gate.
    """

    tokens: int
    nll: float
    kl: float
    frozen_weight: float | None = None


@dataclass(frozen=True)
class EncodedDocument:
    """A document as tokens: `ids` = [prefix] + context + text, the first `query_length` given."""

    ids: list[int]
    query_length: int
    truncated: bool


def encode_document(tokenizer, context: str, text: str, max_length: int) -> EncodedDocument:
    """[prefix token] + context ids + text ids, cut at `max_length` tokens from the text's end.

    Context and text are tokenised separately (a separator such as a space or a newline belongs in
    one of them), so the scored tokens are the text's own, whatever the context.
    """
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    ids = [prefix_token_id(tokenizer), *context_ids, *text_ids]
    query_length = min(1 + len(context_ids), max_length)
    return EncodedDocument(ids[:max_length], query_length, len(ids) > max_length)


@torch.no_grad()
def score_documents(
    model: IMSMModel,
    documents: Sequence[EncodedDocument],
    pad_id: int,
    batch_size: int = 8,
    on_batch_done: Callable[[list[int], list[DocumentDrift]], None] | None = None,
    frozen_states: TaskStates | None = None,
) -> list[DocumentDrift]:
    """Each document's NLL and KL from the base model per text token, batched by length.

    Every document needs at least one text token (`len(ids) > query_length`). After each batch
    `on_batch_done(indices, drifts)` receives the batch's document indices and their results.
    With `frozen_states` the frozen branch's states (the base model's, what the KL compares
    against) come from that store, computed first for the documents it lacks, and only the tuned
    branch runs.
    """
    for index, document in enumerate(documents):
        if len(document.ids) <= document.query_length:
            raise ValueError(
                f"document {index} has no text tokens ({len(document.ids)} ids, all of them query): "
                "leave it out (evaluate_task skips such documents)"
            )
    vocabulary = model.config.vocab_size
    chunk = max(1, CHUNK_ELEMENTS // vocabulary)
    if frozen_states is not None and not uses_frozen_states(model, drift=True):
        frozen_states = None
    if frozen_states is not None:
        add_document_states(model, documents, pad_id, frozen_states, batch_size)
    results: list[DocumentDrift | None] = [None] * len(documents)
    for batch, batch_documents in _by_length(documents, batch_size):
        input_ids, attention_mask, query_mask, predicts_text = _document_batch(model, batch_documents, pad_id)
        B = input_ids.shape[0]
        rows, cols = predicts_text.nonzero(as_tuple=True)  # [N], [N], row-major
        targets = input_ids[rows, cols + 1]  # [N]
        states = model.branch_states(input_ids, attention_mask, query_mask, run_frozen=frozen_states is None)
        if frozen_states is not None:  # h_M at the scored positions and q_M, as the frozen branch gave them
            stored = [frozen_states.hidden(_document_key(d)) for d in batch_documents]
            states.frozen = states.tuned.new_zeros(states.tuned.shape)  # [B, T, d], read at (rows, cols) only
            states.frozen[rows, cols] = torch.cat([hidden for _, hidden in stored]).to(states.tuned)  # [N, d]
            states.query_frozen = torch.stack([query for query, _ in stored]).to(model.device)  # [B, d]
        nll_sum = torch.zeros(B, dtype=torch.float64, device=model.device)
        kl_sum = torch.zeros_like(nll_sum)
        gate_sum = torch.zeros_like(nll_sum)
        has_gate = False
        for first in range(0, rows.numel(), chunk):
            r, c = rows[first : first + chunk], cols[first : first + chunk]  # [n]
            own = model.fused_logits(states, (r, c))  # logits [n, V], gate [n, d] or None
            log_model = F.log_softmax(own.logits.float(), dim=-1)  # [n, V]
            nll = -log_model.gather(-1, targets[first : first + chunk, None])[:, 0]  # [n]
            nll_sum.index_add_(0, r, nll.double())
            if states.frozen is not None:  # the base model: the frozen branch through the frozen head
                base = model.fused_logits(states, (r, c), gate=1.0).logits  # [n, V]
                log_base = F.log_softmax(base.float(), dim=-1)  # [n, V]
                # sum_v p_base(v) (log p_base(v) - log p_model(v))
                kl = F.kl_div(log_model, log_base, reduction="none", log_target=True).sum(-1)  # [n]
                kl_sum.index_add_(0, r, kl.double())
            if own.gate is not None:
                has_gate = True
                gate_sum.index_add_(0, r, own.gate.mean(-1).double())  # mean over features, [n]
        counts = predicts_text.sum(-1)  # [B]
        drifts = []
        for row, index in enumerate(batch):
            n = int(counts[row])
            drift = DocumentDrift(
                tokens=n,
                nll=float(nll_sum[row]) / n,
                kl=float(kl_sum[row]) / n,
                frozen_weight=float(gate_sum[row]) / n if has_gate else None,
            )
            results[index] = drift
            drifts.append(drift)
        if on_batch_done is not None:
            on_batch_done(batch, drifts)
    return results


def _by_length(documents: Sequence[EncodedDocument], batch_size: int):
    """(indices, documents) batches, longest first so that a batch pads little."""
    order = sorted(range(len(documents)), key=lambda i: -len(documents[i].ids))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        yield batch, [documents[i] for i in batch]


def _document_batch(model: IMSMModel, documents: Sequence[EncodedDocument], pad_id: int):
    """(input_ids, attention_mask, query_mask, predicts_text), each [B, T], on the model's device."""
    input_ids, attention_mask = right_padded([d.ids for d in documents], pad_id)
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    positions = torch.arange(input_ids.shape[1], device=model.device)[None, :]  # [1, T]
    query_lengths = torch.tensor([d.query_length for d in documents], device=model.device)[:, None]  # [B, 1]
    lengths = attention_mask.sum(-1, keepdim=True)  # [B, 1]
    query_mask = positions < query_lengths  # [B, T]: prefix token and context (eq. 3)
    # Position t predicts token t + 1; the text's tokens are those at query_length .. length - 1.
    predicts_text = (positions >= query_lengths - 1) & (positions < lengths - 1)  # [B, T]
    return input_ids, attention_mask, query_mask, predicts_text


def _document_key(document: EncodedDocument) -> bytes:
    # The query is the prompt and the text the continuation: the same entry as scoring that pair.
    return state_key(document.ids[: document.query_length], document.ids[document.query_length :])


@torch.no_grad()
def add_document_states(
    model: IMSMModel, documents: Sequence[EncodedDocument], pad_id: int, store: TaskStates, batch_size: int = 8
) -> None:
    """Compute, by the frozen branch alone, the states `store` lacks for `documents` (h_M at the
    positions predicting text tokens, q_M over the query); add them and write the store once."""
    missing = [d for d in documents if _document_key(d) not in store]
    for _, batch_documents in _by_length(missing, batch_size):
        input_ids, attention_mask, query_mask, predicts_text = _document_batch(model, batch_documents, pad_id)
        hidden = model.frozen_hidden_states(input_ids, attention_mask)  # [B, T, d]
        query = masked_mean(hidden, query_mask)  # [B, d]
        for row, document in enumerate(batch_documents):
            store.add(_document_key(document), query[row], hidden[row, predicts_text[row]])  # [n, d]
    if store.unsaved:
        store.save()


def _token_weighted(values: Sequence[float], tokens: Sequence[int]) -> tuple[float, float]:
    """The mean per token over all documents, and its standard error over documents.

    The mean is a ratio sum(x_i) / sum(n_i) of per-document totals x_i = n_i * value_i; its
    standard error treats documents as the sampled units (the delta method, as for a clustered
    mean): sqrt(D / (D - 1) * sum((x_i - mean * n_i)^2)) / sum(n_i). NaN for one document.
    """
    total = sum(tokens)
    mean = sum(v * n for v, n in zip(values, tokens, strict=True)) / total
    D = len(values)
    if D < 2:
        return mean, float("nan")
    spread = sum((n * (v - mean)) ** 2 for v, n in zip(values, tokens, strict=True))
    return mean, math.sqrt(D / (D - 1) * spread) / total


def drift_metrics(drifts: Sequence[DocumentDrift], truncated: int, skipped: int) -> dict[str, float]:
    """A drift task's corpus metrics from its documents' results."""
    tokens = [d.tokens for d in drifts]
    nll, nll_stderr = _token_weighted([d.nll for d in drifts], tokens)
    kl, kl_stderr = _token_weighted([d.kl for d in drifts], tokens)
    metrics = {
        "drift_nll": nll,
        "drift_nll_stderr": nll_stderr,
        "drift_kl": kl,
        "drift_kl_stderr": kl_stderr,
        "tokens": float(sum(tokens)),
        "truncated_documents": float(truncated),
        "skipped_documents": float(skipped),
    }
    if drifts and drifts[0].frozen_weight is not None:
        metrics["gate_frozen_weight"] = _token_weighted([d.frozen_weight for d in drifts], tokens)[0]
    return metrics


def _significant(value: float | None) -> float | None:
    # Seven significant digits: a KL of 3e-7 must not round to 0.
    return None if value is None else float(f"{value:.7g}")


@dataclass(eq=False, repr=False)
class Drift(TaskKind):
    """NLL and KL from the base model per token, per document and overall (the kind of
    `answer_type: drift`).

    Documents whose text is empty (SciQ's rows without a support paragraph) are skipped and
    counted in `skipped_documents`; the per-example rows hold the scored documents only, under
    their record index. A document longer than `max_length` tokens (or the model's position
    limit, whichever is smaller) keeps its first `max_length` and counts in
    `truncated_documents`. The chat template is never applied: this is text, not a prompt.
    """

    max_length: int = DEFAULT_MAX_LENGTH

    unit: ClassVar[str] = "doc"
    row_type: ClassVar[type] = DocumentDrift
    journal_format: ClassVar[int] = JOURNAL_FORMAT
    chat_template: ClassVar[bool] = False  # text, never a prompt

    def __post_init__(self) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None) or self.max_length
        self.max_length = min(self.max_length, limit)
        self.documents = [self.task.document(r) for r in self.records]
        self.encoded = {
            i: encode_document(self.formatter.tokenizer, context, text, self.max_length)
            for i, (context, text) in enumerate(self.documents)
            if text.strip()
        }
        # A context can fill max_length and leave no text to score.
        self.scored = [i for i, e in self.encoded.items() if len(e.ids) > e.query_length]
        if not self.scored:
            raise IMSMError(f"task {self.task.name}: none of its {len(self.records)} documents has text to score")

    def items(self) -> list[int]:
        return self.scored

    def journal_key(self) -> tuple[dict[str, Any], list[str]]:
        return {"max_length": self.max_length}, [f"{context}\0{text}" for context, text in self.documents]

    def run(self, todo: list[int], keep) -> None:
        documents = [self.encoded[i] for i in todo]
        score_documents(
            self.model, documents, self.formatter.pad_id, self.batch_size, keep, self.open_frozen_states(drift=True)
        )

    def report(self, done: dict[int, DocumentDrift]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        truncated = sum(self.encoded[i].truncated for i in self.scored)
        metrics = drift_metrics([done[i] for i in self.scored], truncated, len(self.records) - len(self.scored))
        examples = [
            {
                "index": i,
                "source": self.records[i].get("_source"),
                "tokens": done[i].tokens,
                "truncated": self.encoded[i].truncated,
                "nll": _significant(done[i].nll),
                "kl": _significant(done[i].kl),
                "gate_frozen_weight": _significant(done[i].frozen_weight),
            }
            for i in self.scored
        ]
        return metrics, examples
