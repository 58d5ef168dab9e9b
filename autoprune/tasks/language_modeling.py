"""Language modelling: windows of text, next-token loss, perplexity that goes down.

An example is a window of tokens (:func:`autoprune.tasks.data.load_windows`); its targets
are its own tokens shifted by one, so position ``t`` predicts token ``t + 1`` and a window of
``L`` real tokens has ``L - 1`` predicted tokens. The model is a ``*ForCausalLM``; its loss is
the mean cross entropy of a window's predicted tokens; its metric is perplexity,
``exp(total NLL / total predicted tokens)`` over a split (token-weighted, not a mean of
per-window perplexities), minimized, with a stated cap as the hypervolume's reference.

The dense model's full next-token distribution does not fit in memory for every retraining
window (a 49,152-token vocabulary is 50 MB per 256-token window), so the teacher's targets
are its **top-k**: per position, the log-probabilities of its ``k`` most likely tokens, of
the rest of the vocabulary as one bucket, and the ``k`` token ids. Distillation and the
divergence compare the student with the teacher over those ``k + 1`` buckets; that equals the
full KL divergence when ``k`` covers the vocabulary and is a lower bound of it otherwise
(merging outcomes never increases a KL divergence). ``teacher = "cached"`` computes the
targets once per run; ``"online"`` runs the dense model beside the student in every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autoprune.engine.models import load_causal_lm
from autoprune.tasks.base import Batch, Direction, Reduction, Task, TeacherMode, model_inputs
from autoprune.tasks.data import Encoded

DEFAULT_TOP_K = 32
"""Teacher tokens per position by default: 65 KB per 256-token window (the design note)."""

LOGITS_BYTES = 2**28
"""Outside training, windows are run through the model in chunks whose logits stay under
this many bytes (256 MB)."""

_EMPTY = -1.0e4
"""The log-probability of an empty bucket: exp() underflows to 0, and unlike -inf it keeps
every gradient finite."""


class LanguageModeling(Task):
    """Next-token prediction on windows of text, scored by perplexity.

    Args:
        reference: The perplexity cap a hypervolume counts from (worse candidates add none).
        teacher: ``cached`` (top-k targets computed once per run) or ``online``.
        top_k: The teacher's tokens per position.

    Raises:
        ValueError: If ``reference`` is not above 1 or ``top_k`` is below 1.
    """

    kind: ClassVar[str] = "language_modeling"
    metric = "perplexity"
    direction: Direction = "minimize"

    def __init__(
        self, *, reference: float, teacher: TeacherMode = "cached", top_k: int = DEFAULT_TOP_K
    ) -> None:
        if not reference > 1.0:
            raise ValueError(f"reference: a perplexity cap above 1, got {reference}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self._reference = reference
        self.teacher: TeacherMode = teacher
        self.top_k = top_k

    def load_model(self, source: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The causal language model at ``source``; it has no new head, so ``seed`` is unused."""
        return load_causal_lm(source)

    def loss(
        self, model: PreTrainedModel, batch: Batch, reduction: Reduction = "mean"
    ) -> torch.Tensor:
        nll, tokens = _nll(model, batch)  # (batch,), (batch,)
        per_window = nll / tokens.clamp(min=1)  # (batch,)
        return per_window.mean() if reduction == "mean" else per_window.sum()

    def distillation_loss(
        self,
        model: PreTrainedModel,
        batch: Batch,
        teacher: torch.Tensor,
        temperature: float,
        weight: float,
    ) -> torch.Tensor:
        """Per window, the mean over its predicted tokens of ``weight`` times the top-k KL
        divergence at ``temperature`` (times ``temperature^2``) plus ``1 - weight`` times the
        cross entropy; the mean over windows."""
        logits = model(**model_inputs(batch)).logits[:, :-1]  # (batch, positions, vocab)
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (batch, positions, vocab)
        targets, mask = _targets(batch)  # (batch, positions) each
        hard = -log_probs.gather(-1, targets[..., None])[..., 0]  # (batch, positions)
        soft = top_k_kl(log_probs, teacher, temperature) * temperature**2  # (batch, positions)
        per_token = weight * soft + (1 - weight) * hard  # (batch, positions)
        return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()

    def divergence(
        self, model: PreTrainedModel, batch: Batch, teacher: torch.Tensor
    ) -> torch.Tensor:
        """The top-k KL divergence at temperature 1 of every real predicted token, ``(tokens,)``."""
        values = []
        for rows in _chunks(model, batch):
            part = _part(batch, rows)
            logits = model(**model_inputs(part)).logits[:, :-1]  # (chunk, positions, vocab)
            log_probs = F.log_softmax(logits.float(), dim=-1)  # (chunk, positions, vocab)
            _, mask = _targets(part)  # (chunk, positions)
            values.append(top_k_kl(log_probs, teacher[rows], 1.0)[mask.bool()])  # (tokens,)
        return torch.cat(values)

    def teacher_targets(self, model: PreTrainedModel, batch: Batch) -> torch.Tensor:
        """Per position, the dense model's top-k log-probabilities, the rest's, and the top-k
        token ids, packed as ``(batch, positions, 2k + 1)`` (see :func:`top_k_targets`).

        Rows cached for a split line up with its batches because windows are never padded
        (:func:`~autoprune.tasks.data.load_windows`), so no batch is trimmed shorter.
        """
        parts = []
        with torch.inference_mode():
            for rows in _chunks(model, batch):
                logits = model(**model_inputs(_part(batch, rows))).logits[:, :-1]
                parts.append(top_k_targets(logits, self.top_k))  # (chunk, positions, 2k + 1)
        return torch.cat(parts)

    def example_outputs(self, model: PreTrainedModel, data: Encoded) -> torch.Tensor:
        """Per window, its summed next-token NLL and its predicted-token count, ``(windows,
        2)`` in float64."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()

        def rows(batch: Batch) -> torch.Tensor:
            nll, tokens = _nll(model, {k: v.to(device) for k, v in model_inputs(batch).items()})
            return torch.stack([nll, tokens], dim=1).double()  # (batch, 2)

        try:
            with torch.inference_mode():
                return data.map_rows(rows, _chunk_size(model, data.input_ids.shape[1]))
        finally:
            model.train(was_training)

    def metric_of(self, outputs: torch.Tensor, data: Encoded) -> float:
        """Perplexity: ``exp`` of the summed NLL over the summed predicted tokens."""
        totals = outputs.double().sum(dim=0)  # (2,)
        return float(torch.exp(totals[0] / totals[1]))

    @property
    def reference(self) -> float:
        return self._reference


def _targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The token each position predicts and whether it is a real token (float 0/1), both
    ``(batch, positions)`` with ``positions = length - 1``."""
    return batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].float()


def _nll(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's summed next-token NLL and its predicted-token count, ``(batch,)`` each."""
    nll, tokens = [], []
    for rows in _chunks(model, batch):
        part = _part(batch, rows)
        logits = model(**model_inputs(part)).logits[:, :-1]  # (chunk, positions, vocab)
        targets, mask = _targets(part)  # (chunk, positions) each
        flat = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        per_token = flat.view(targets.shape)  # (chunk, positions)
        nll.append((per_token * mask).sum(dim=1))  # (chunk,)
        tokens.append(mask.sum(dim=1))  # (chunk,)
    return torch.cat(nll), torch.cat(tokens)


def _chunk_size(model: PreTrainedModel, length: int) -> int:
    """Windows of ``length`` tokens whose float32 logits fit in :data:`LOGITS_BYTES`."""
    return max(1, LOGITS_BYTES // (length * int(model.config.vocab_size) * 4))


def _chunks(model: PreTrainedModel, batch: Batch) -> Iterator[slice]:
    """Consecutive slices of ``batch``'s windows, each :func:`_chunk_size` windows at most."""
    windows, length = batch["input_ids"].shape
    size = _chunk_size(model, length)
    return (slice(start, start + size) for start in range(0, windows, size))


def _part(batch: Batch, rows: slice) -> Batch:
    return {k: v[rows] for k, v in batch.items()}


def top_k_targets(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Teacher targets from ``(batch, positions, vocab)`` logits: ``(batch, positions, 2k +
    1)``, the ``k`` largest log-probabilities, the log-probability of all the other tokens
    together, then the ``k`` token ids (exact in float32 below 2^24). ``k`` is capped at the
    vocabulary.

    Raises:
        ValueError: For a vocabulary of 2^24 tokens or more (ids would not be exact).
    """
    vocab = logits.shape[-1]
    if vocab >= 2**24:
        raise ValueError(f"a vocabulary of {vocab} tokens: ids above 2^24 are not exact in float32")
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (batch, positions, vocab)
    top = log_probs.topk(min(k, vocab), dim=-1)  # (batch, positions, k) each
    rest = _rest(log_probs, top.indices)  # (batch, positions, 1)
    return torch.cat([top.values, rest, top.indices.float()], dim=-1)  # (batch, positions, 2k+1)


def _rest(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The log-probability of every token but ``ids``, ``(..., 1)``; :data:`_EMPTY` where
    ``ids`` cover the vocabulary."""
    others = log_probs.scatter(-1, ids, _EMPTY)  # (..., vocab)
    return others.logsumexp(dim=-1, keepdim=True).clamp(min=_EMPTY)  # (..., 1)


def top_k_kl(log_probs: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(teacher || student)`` per position over the teacher's ``k`` tokens and the rest,
    ``(batch, positions)``.

    Both distributions are merged into the same ``k + 1`` buckets at temperature 1, then
    softened by ``temperature`` (each bucket's probability raised to ``1 / temperature`` and
    renormalized); with ``k`` covering the vocabulary this is the full KL divergence at
    ``temperature``.

    Args:
        log_probs: The student's ``(batch, positions, vocab)`` log-probabilities (at
            temperature 1).
        teacher: :func:`top_k_targets` rows for the same positions, ``(batch, positions, 2k+1)``.
        temperature: The softening temperature.
    """
    k = (teacher.shape[-1] - 1) // 2
    ids = teacher[..., k + 1 :].long()  # (batch, positions, k)
    student = torch.cat([log_probs.gather(-1, ids), _rest(log_probs, ids)], dim=-1)
    t = F.log_softmax(teacher[..., : k + 1] / temperature, dim=-1)  # (batch, positions, k+1)
    s = F.log_softmax(student / temperature, dim=-1)  # (batch, positions, k+1)
    return (t.exp() * (t - s)).sum(dim=-1)  # (batch, positions)
