"""Pretraining losses: masked-token cross-entropy normalised over all processes, and the CLIP contrastive
loss over features gathered from every process with their gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .masking import IGNORE_INDEX

__all__ = ["ObjectiveOutput", "clip_loss", "gather_with_grad", "masked_token_loss", "world"]


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
    """``loss`` (the tensor to back-propagate) and detached float metrics."""


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor, name: str) -> ObjectiveOutput:
    """Cross-entropy over the tokens whose label is not ``-100``, as a mean over the masked tokens of all
    processes (so each process's loss is its sum over the global count, times the world size, which DDP's
    gradient averaging undoes). Reports ``{name}_loss`` and ``{name}_acc`` over all processes."""
    _, size = world()
    selected = labels != IGNORE_INDEX
    logits, labels = logits[selected].float(), labels[selected]
    total = F.cross_entropy(logits, labels, reduction="sum") if len(labels) else logits.sum() * 0.0
    correct = (logits.argmax(-1) == labels).sum() if len(labels) else labels.new_zeros(())
    stats = _all_reduce_sum(torch.stack([total.detach(), correct.float(), torch.tensor(float(len(labels)))]))
    count = stats[2].clamp(min=1)
    return ObjectiveOutput(
        loss=total / count * size,
        **{f"{name}_loss": (stats[0] / count).item(), f"{name}_acc": (stats[1] / count).item()},
    )


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> ObjectiveOutput:
    """Symmetric InfoNCE on l2-normalised features: this process's rows against the whole gathered batch
    (the negatives are the global batch), ``exp(logit_scale)`` as inverse temperature (capped at 100)."""
    rank, size = world()
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    scale = logit_scale.exp().clamp(max=100)
    targets = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
    image_to_text = scale * image.float() @ all_text.float().T
    text_to_image = scale * text.float() @ all_image.float().T
    loss = (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2
    hits = (image_to_text.argmax(-1) == targets).float().mean() + (text_to_image.argmax(-1) == targets).float().mean()
    stats = _all_reduce_sum(torch.stack([loss.detach(), hits / 2])) / size
    return ObjectiveOutput(
        loss=loss, clip_loss=stats[0].item(), clip_acc=stats[1].item(), temperature=(1 / scale).item()
    )
