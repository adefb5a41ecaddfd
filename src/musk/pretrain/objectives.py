"""Pretraining losses: masked-token cross-entropy normalised over all processes, and the CLIP contrastive
loss over features gathered from every process with their gradients.

Under gradient accumulation every loss is this micro-batch's *share* of the loss of the whole optimizer step
(:class:`StepContext` says what the step holds), so the accumulated gradient equals the gradient of one step
over the large batch: the masked-token losses are normalised by the step's target count, and the CLIP loss
sees the whole step's features (cached without gradients) as negatives, as open_clip's ``accum_freq`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .masking import IGNORE_INDEX

__all__ = ["ObjectiveOutput", "StepContext", "clip_loss", "gather_with_grad", "masked_token_loss", "share", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients every process computed for this process's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` from every process, in rank order (every process must give the same number of rows).

    The gradient that reaches this process's ``x`` is the sum over processes of the gradient of their losses;
    with DDP averaging parameter gradients, training follows the mean of the processes' losses, which for
    :func:`clip_loss` is the loss of one process holding the whole global batch.
    """
    _, size = world()
    return x if size == 1 else _GatherWithGrad.apply(x)


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    _, size = world()
    if size > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class ObjectiveOutput(dict):
    """``loss`` (the tensor to back-propagate) and detached float metrics, both as this micro-batch's share
    of the optimizer step (the training loop sums them over the step's micro-batches)."""


@dataclass
class StepContext:
    """What one micro-batch's loss needs to know of its optimizer step.

    ``micro_batches``: accumulation steps; ``index``: this micro-batch's; ``targets``: predicted tokens per
    masked-token objective over the whole step and all processes; ``features``: the contrastive ``(image,
    text)`` features of the whole step, gathered from every process without gradients, rows ordered by
    (micro-batch, process) (None: the negatives are this micro-batch's, from every process).
    """

    micro_batches: int = 1
    index: int = 0
    targets: dict[str, float] = field(default_factory=dict)
    features: tuple[torch.Tensor, torch.Tensor] | None = None


def share(out: ObjectiveOutput, step: StepContext | None) -> ObjectiveOutput:
    """A per-micro-batch mean (equal micro-batches) as its share of the step: everything divided by their number."""
    n = 1 if step is None else step.micro_batches
    return ObjectiveOutput({k: v / n for k, v in out.items()})


def masked_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, name: str, step: StepContext | None = None
) -> ObjectiveOutput:
    """Cross-entropy over the tokens whose label is not ``-100``, as a mean over the masked tokens of all
    processes and micro-batches of the step (``step.targets[name]``; without a step, this micro-batch's).
    Each process's loss is its sum over that count times the world size, which DDP's gradient averaging
    undoes. Reports ``{name}_loss`` and ``{name}_acc``."""
    _, size = world()
    selected = labels != IGNORE_INDEX
    logits, labels = logits[selected].float(), labels[selected]
    total = F.cross_entropy(logits, labels, reduction="sum") if len(labels) else logits.sum() * 0.0
    correct = (logits.argmax(-1) == labels).sum() if len(labels) else labels.new_zeros(())
    stats = _all_reduce_sum(torch.stack([total.detach(), correct.float(), torch.tensor(float(len(labels)))]))
    count = max(float(stats[2]) if step is None else step.targets[name], 1.0)
    return ObjectiveOutput(
        loss=total / count * size,
        **{f"{name}_loss": stats[0].item() / count, f"{name}_acc": stats[1].item() / count},
    )


def _step_features(local: torch.Tensor, step: StepContext | None, which: int) -> torch.Tensor:
    """This micro-batch's gathered rows (with gradients) inside the whole step's cached rows."""
    if step is None or step.features is None:
        return local
    cached, n = step.features[which], local.shape[0]
    return torch.cat([cached[: step.index * n], local.to(cached.dtype), cached[(step.index + 1) * n :]])


def clip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, step: StepContext | None = None
) -> ObjectiveOutput:
    """Symmetric InfoNCE on l2-normalised features: this process's rows against every row of the step (all
    processes; with ``step.features``, all micro-batches too), ``exp(logit_scale)`` as inverse temperature
    (capped at 100). With cached features each micro-batch's loss is the step's loss, whose gradient reaches
    only this micro-batch's features (and 1/micro_batches of it the temperature), so the accumulated gradient
    is the step's."""
    rank, size = world()
    rows = image.shape[0]
    all_image = _step_features(gather_with_grad(image), step, 0).float()
    all_text = _step_features(gather_with_grad(text), step, 1).float()
    micro = 1 if step is None or step.features is None else step.micro_batches
    scale = logit_scale.exp().clamp(max=100)
    scale = scale.detach() + (scale - scale.detach()) / micro
    # this process's rows: micro-batch m of process r holds rows (m * size + r) * rows ... + rows
    starts = (torch.arange(micro, device=image.device) * size + rank) * rows
    targets = (starts[:, None] + torch.arange(rows, device=image.device)).flatten()
    image_to_text = scale * all_image[targets] @ all_text.T
    text_to_image = scale * all_text[targets] @ all_image.T
    loss = (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2
    hits = (image_to_text.argmax(-1) == targets).float().mean() + (text_to_image.argmax(-1) == targets).float().mean()
    stats = _all_reduce_sum(torch.stack([loss.detach(), hits / 2])) / size
    n = 1 if step is None else step.micro_batches
    return ObjectiveOutput(
        loss=loss if micro > 1 else loss / n,
        clip_loss=stats[0].item() / n,
        clip_acc=stats[1].item() / n,
        temperature=(1 / scale.detach()).item() / n,
    )
