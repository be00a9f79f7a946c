"""The loss of a prompt -> completion task, with logits only where the loss reads them.

A causal LM's forward computes the LM head at every position, but a completion task's loss reads only the positions
that predict a completion token: on CB-t2t, 15 of 117 columns of a batch of 8. The head is a (hidden x vocabulary)
matmul per position, and with a large vocabulary it rivals the rest of the model (SmolLM2: 49,152 x 576, a fifth
of a token's forward; Gemma 3: 262,144 x 640, more than the body). The logits also dominate memory: 8 x 117 x
49,152 floats are 184 MB, and the backward keeps another copy.

transformers' causal LMs take ``logits_to_keep``, a 1-D tensor of sequence positions, and run the head on those
alone. :func:`completion_nll` passes the union, over the batch's rows, of the columns that predict a labelled token,
and computes the loss from them; a model whose forward has no ``logits_to_keep`` gets the full logits instead. The
loss is the same either way (the same terms, each from the same logits), so this changes speed and memory only.

:class:`CompletionLossMixin` puts it under a ``transformers.Trainer``: training's loss, and evaluation's per-example
``(summed NLL, token count, greedy agrees, row fingerprint)``, whose first two :meth:`GenerationTask.compute_metrics`
reads (so the evaluation needs no ``preprocess_logits_for_metrics``).

"Greedy agrees" is the loss pass checking, for free, what greedy generation would produce: where the argmax at every
completion position is the reference token (its EOS included), greedy decoding of that prompt yields the reference
and stops, as speculative decoding verifies a draft, the reference being the draft. The scorer then generates only
for the other prompts (:class:`~.generation.GenerationScorer`). The argmax must win by :data:`GREEDY_MARGIN`, so
that the rounding between this batch and a generation batch (other rows, other padding) cannot change it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..tasks.metrics import IGNORE_INDEX


def completion_columns(labels: torch.Tensor) -> torch.Tensor:
    """The columns whose logits predict a labelled token (token t is predicted at t - 1), over all rows:
    ``(k,)`` ascending."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward (under DDP, PEFT and compile wrappers) takes ``logits_to_keep``."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            return True
        # DDP / DataParallel / torch.compile keep the model in .module / ._orig_mod; PEFT in .get_base_model().
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None and hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        if inner is None:
            return False
        model = inner
    return False


def completion_nll(model: Any, inputs: dict[str, Any], greedy_check: bool = False) -> tuple[torch.Tensor, ...]:
    """Per row, the summed negative log-likelihood of its labelled tokens and their count: two ``(batch,)`` tensors.

    ``inputs`` is a collated batch with ``labels`` (-100 where unlabelled), which is not passed to the model. The
    NLL is computed in float32 from the logits, as transformers' causal-LM loss does. With ``greedy_check``, a third
    ``(batch,)`` bool tensor: whether greedy decoding would produce the row's labelled tokens
    (:func:`greedy_agrees`).
    """
    labels = inputs["labels"]
    features = {k: v for k, v in inputs.items() if k != "labels"}
    targets = labels[:, 1:]
    if accepts_logits_to_keep(model):
        columns = completion_columns(labels)
        logits = model(**features, logits_to_keep=columns).logits  # (B, k, V)
        targets = targets[:, columns]
    else:
        logits = model(**features).logits[:, :-1]  # (B, T-1, V)
    mask = targets != IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets.clamp(min=0), reduction="none")
    sums = (nll * mask).sum(dim=-1), mask.sum(dim=-1)
    return (*sums, greedy_agrees(logits, targets, mask)) if greedy_check else sums


#: How far, in float32 logits, the reference token must lead every other for the loss pass to vouch for greedy
#: decoding. The loss pass's batch (right-padded, with references) and generation's (left-padded prompts) round
#: differently, and generation decodes with the KV cache: on SmolLM2's CB-t2t dev set their logits differ by up to
#: 1.0e-4 at any completion position (benchmarks/decoder/vouching.py), a hundredth of this. A closer race is left to
#: generation to decide.
GREEDY_MARGIN = 1e-2


def greedy_agrees(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, whether every labelled target is the argmax of its logits by at least :data:`GREEDY_MARGIN`:
    ``(batch,)`` bool. ``logits`` ``(B, k, V)``, ``targets`` and ``mask`` ``(B, k)``.

    Only float32 logits computed without autocast are vouched for (lower precision rounds by more than the margin);
    a row without labelled tokens never agrees. Logits can be float32 and still come from a lower-precision forward
    (accelerate's mixed precision casts them back after autocast); the Trainer checks that before asking
    (``CompletionLossMixin._float32_throughout``).
    """
    if logits.dtype != torch.float32 or torch.is_autocast_enabled(logits.device.type):
        return torch.zeros(targets.shape[0], dtype=torch.bool, device=targets.device)
    top = logits.detach().topk(2, dim=-1)
    wins = (top.indices[..., 0] == targets) & (top.values[..., 0] - top.values[..., 1] >= GREEDY_MARGIN)
    return (wins | ~mask).all(dim=-1) & mask.any(dim=-1)


#: Row fingerprints are taken modulo this prime below 2**24, so that float32 predictions hold them exactly.
_FINGERPRINT_MODULUS = 16_777_213


def row_fingerprints(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A number per row from its unpadded tokens (a polynomial hash below 2**24): ``(batch,)`` int64.

    The loss pass returns it beside each row's greedy check, so that whoever reads the gathered predictions can tell
    which row each one belongs to, whatever order the evaluation went in. Padding does not count: a row reads the same
    padded left, right or not at all.
    """
    ids = input_ids.long()
    real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    rank = real.long().cumsum(dim=-1)  # 1.. over a row's real tokens, wherever its padding is
    # 31**rank mod p by repeated squaring, elementwise (every product stays below 2**48)
    weight, base, exponent = torch.ones_like(ids), torch.full_like(ids, 31), rank.clone()
    while bool((exponent > 0).any()):
        odd = exponent % 2 == 1
        weight = torch.where(odd, weight * base % _FINGERPRINT_MODULUS, weight)
        base, exponent = base * base % _FINGERPRINT_MODULUS, exponent // 2
    terms = (ids % _FINGERPRINT_MODULUS) * weight % _FINGERPRINT_MODULUS * real
    return terms.sum(dim=-1) % _FINGERPRINT_MODULUS


class CompletionLossMixin:
    """A ``transformers.Trainer`` mixin for prompt -> completion tasks: the loss from :func:`completion_nll`.

    Training: the summed NLL over ``num_items_in_batch`` when the Trainer counts it (the whole accumulated batch's
    labelled tokens, as transformers' own causal-LM loss divides), else the batch's mean per labelled token; under
    label smoothing or a ``compute_loss_func`` the Trainer's own loss is used. Evaluation: ``prediction_step``
    returns per-example ``(summed NLL, token count, greedy agrees, row fingerprint)`` as its predictions.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or "labels" not in inputs or self.label_smoother is not None or \
                self.compute_loss_func is not None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        nll, count = completion_nll(model, inputs)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            loss = nll.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices:  # the Trainer's own rescaling of a token-normalised loss
                loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                               else self.args.n_gpu)
        else:
            loss = nll.sum() / count.sum().clamp(min=1)
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            if self._float32_throughout(model):
                nll, count, agrees = completion_nll(model, inputs, greedy_check=True)
            else:  # vouch for nothing
                nll, count = completion_nll(model, inputs)
                agrees = torch.zeros_like(count, dtype=torch.bool)
        loss = (nll.sum() / count.sum().clamp(min=1)).detach()
        if prediction_loss_only:
            return loss, None, None
        fingerprints = row_fingerprints(inputs["input_ids"], inputs.get("attention_mask"))
        columns = [nll, count.to(nll.dtype), agrees.to(nll.dtype), fingerprints.to(nll.dtype)]
        return loss, torch.stack(columns, dim=-1).detach(), inputs["labels"]

    def _float32_throughout(self, model: Any) -> bool:
        """Whether evaluation computes in float32 end to end, as :data:`GREEDY_MARGIN` assumes: no mixed precision
        (accelerate wraps the forward in autocast and hands back float32 logits, so the logits' dtype cannot tell),
        no half-precision evaluation, float32 weights."""
        args = self.args
        if args.bf16 or args.fp16 or getattr(args, "bf16_full_eval", False) or getattr(args, "fp16_full_eval", False):
            return False
        if getattr(self.accelerator, "mixed_precision", "no") not in ("no", None):
            return False
        return all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())


def trainer_class(task: Any, base: type) -> type:
    """``base`` (a Trainer class) with :class:`CompletionLossMixin` for a generation task; ``base`` otherwise."""
    if getattr(task, "kind", None) != "generation":
        return base
    return type(f"Completion{base.__name__}", (CompletionLossMixin, base), {})


def logits_preprocessor(task: Any) -> Any:
    """The ``preprocess_logits_for_metrics`` to give the Trainer of :func:`trainer_class`: the task's own, except for
    a generation task, whose evaluation already returns per-example sums."""
    return None if getattr(task, "kind", None) == "generation" else getattr(task, "preprocess_logits_for_metrics", None)
