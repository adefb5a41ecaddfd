"""Slide-level models: a bag aggregator (gated ABMIL, mean pooling, a transformer), report fusion and a head.

An aggregator maps one bag ``(N, D)`` to a slide embedding ``(H,)`` and per-patch weights ``(N,)`` that sum
to one (the attention drawn on heatmaps; uniform for mean pooling). ``linear`` is the baseline: the bag's
mean feature, standardised, straight into the head (no hidden layer; fitted by :mod:`musk.mil.baseline`).
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import hazards_to_risk

__all__ = [
    "AGGREGATORS",
    "FUSIONS",
    "ABMIL",
    "BaselineRisk",
    "MILModel",
    "MeanFeatures",
    "MeanPool",
    "RiskEnsemble",
    "Standardise",
    "TransformerMIL",
    "build_aggregator",
]

AGGREGATORS = ("abmil", "mean", "transmil", "linear")
#: ``none`` = slide only, ``text_only`` = report only, ``concat`` / ``gated`` = both.
FUSIONS = ("none", "concat", "gated", "text_only")


def _embed(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))


class ABMIL(nn.Module):
    """Gated attention MIL (Ilse et al. 2018): ``a_i = softmax(w . (tanh(V h_i) * sigmoid(U h_i)))``."""

    def __init__(self, in_dim: int, hidden: int = 256, attn_dim: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.embed = _embed(in_dim, hidden, dropout)
        self.attn_v = nn.Linear(hidden, attn_dim)
        self.attn_u = nn.Linear(hidden, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        weights = torch.softmax(scores, dim=0)
        return weights @ h, weights


class MeanPool(nn.Module):
    """The baseline: every patch counts the same."""

    def __init__(self, in_dim: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.embed = _embed(in_dim, hidden, dropout)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        return h.mean(0), torch.full((len(x),), 1.0 / len(x), device=x.device)


class Standardise(nn.Module):
    """``(x - mean) / scale`` with fixed (fitted, saved) ``mean`` and ``scale``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class MeanFeatures(nn.Module):
    """The linear baseline's aggregator: the bag's mean feature, standardised; every patch counts the same."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.standardise = Standardise(in_dim)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.standardise(x.mean(0)), torch.full((len(x),), 1.0 / len(x), device=x.device)


class _Block(nn.Module):
    """Pre-norm transformer block that also returns its attention maps (averaged over heads)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm1(x)
        y, attn = self.attn(y, y, y, need_weights=True, average_attn_weights=True)
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


class TransformerMIL(nn.Module):
    """TransMIL-style aggregator: a class token and full self-attention over the patches (``layers`` blocks).

    The weights reported per patch are the class token's attention in the last block, renormalised over the
    patches. Full attention costs O(N^2) memory: fine for a few thousand patches per bag.
    """

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = _embed(in_dim, hidden, dropout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(_Block(hidden, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.cat([self.cls_token, self.embed(x).unsqueeze(0)], dim=1)
        for block in self.blocks:
            tokens, attn = block(tokens)
        weights = attn[0, 0, 1:]
        return self.norm(tokens[0, 0]), weights / weights.sum().clamp_min(1e-12)


class BaselineRisk(nn.Module):
    """The linear baseline (a ``model="linear"`` :class:`MILModel`, fixed) times a learned ``weight`` that starts
    at 1: added to a slide-level model's output, it starts the model at the baseline and leaves the model to learn
    what the baseline misses."""

    def __init__(self, linear: MILModel) -> None:
        super().__init__()
        self.linear = linear.requires_grad_(False)
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, features: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        return self.weight * self.linear(features, text)[0]


def build_aggregator(name: str, in_dim: int, hidden: int, dropout: float) -> nn.Module:
    if name == "abmil":
        return ABMIL(in_dim, hidden, max(hidden // 2, 1), dropout)
    if name == "mean":
        return MeanPool(in_dim, hidden, dropout)
    if name == "transmil":
        return TransformerMIL(in_dim, hidden, dropout=min(dropout, 0.1))
    if name == "linear":
        return MeanFeatures(in_dim)
    raise ValueError(f"model must be one of {AGGREGATORS}, got {name!r}")


class MILModel(nn.Module):
    """Aggregator + optional report fusion + linear head; ``forward`` takes one case at a time.

    ``fusion``: ``none`` (slide only), ``text_only``, ``concat`` (slide and projected report side by side) or
    ``gated`` (a learned per-dimension gate mixes the two: ``g * slide + (1 - g) * report``). The ``linear``
    model reads the standardised mean feature and report vector side by side (``gated`` is not linear: refused).
    ``proportional``: the ``out_dim`` outputs are discrete-time hazard logits that share one risk score,
    ``logit_k = eta + b_k`` (proportional odds: the head gives ``eta``, ``b`` holds one intercept per bin).
    ``standardise``: patch features enter as ``(x - mean) / scale``, per feature, with the training cases' values
    (:meth:`set_feature_scale`; saved with the weights). The head's weights start at zero: every case starts with
    the same outputs (the intercepts), and training moves the cases apart only as far as the data ask.
    ``from_baseline``: a :class:`BaselineRisk` (set with :meth:`set_baseline`) is added to the outputs, so the
    model starts as the linear baseline (one output: survival's risk score).
    """

    def __init__(
        self,
        out_dim: int,
        feature_dim: int | None,
        text_dim: int | None = None,
        model: str = "abmil",
        fusion: str = "none",
        hidden: int = 256,
        dropout: float = 0.25,
        proportional: bool = False,
        standardise: bool = False,
        from_baseline: bool = False,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion != "text_only" and not feature_dim:
            raise ValueError(f"fusion {fusion!r} uses the slides: give feature_dim")
        if fusion != "none" and not text_dim:
            raise ValueError(f"fusion {fusion!r} uses the reports: give text_dim (the report embedding width)")
        if model == "linear" and fusion == "gated":
            raise ValueError("the linear model reads slides and reports side by side: use fusion 'concat', not 'gated'")
        self.fusion = fusion
        self.feature_norm = Standardise(feature_dim) if standardise and fusion != "text_only" else None
        self.aggregator = None if fusion == "text_only" else build_aggregator(model, feature_dim, hidden, dropout)
        self.text_proj = None
        if fusion != "none":
            self.text_proj = Standardise(text_dim) if model == "linear" else _embed(text_dim, hidden, dropout)
        if fusion == "gated":
            self.gate = nn.Linear(2 * hidden, hidden)
        if model == "linear":
            width = sum(m.out_dim for m in (self.aggregator, self.text_proj) if m is not None)
        else:
            width = 2 * hidden if fusion == "concat" else hidden
        self.out_dim = out_dim
        self.head = nn.Linear(width, 1 if proportional else out_dim, bias=not proportional)
        nn.init.zeros_(self.head.weight)
        self.bin_bias = nn.Parameter(torch.zeros(out_dim)) if proportional else None
        if from_baseline and model == "linear":
            raise ValueError("the linear model is the baseline: it cannot start from it")
        linear_fusion = "concat" if fusion == "gated" else fusion  # the linear model reads both side by side
        self.baseline = (
            BaselineRisk(MILModel(1, feature_dim, text_dim, "linear", linear_fusion)) if from_baseline else None
        )

    @torch.no_grad()
    def set_feature_scale(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """The per-feature ``mean`` and ``scale`` (D,) that standardise patch features (``standardise=True``)."""
        if self.feature_norm is None:
            raise ValueError("this model does not standardise its features (standardise=False)")
        self.feature_norm.mean.copy_(torch.as_tensor(mean))
        self.feature_norm.scale.copy_(torch.as_tensor(scale))

    @torch.no_grad()
    def set_output_bias(self, values: torch.Tensor) -> None:
        """Start the outputs' intercepts (the bins' ``b_k``, or the head's bias) at ``values`` (out_dim,)."""
        bias = self.bin_bias if self.bin_bias is not None else self.head.bias
        bias.copy_(torch.as_tensor(values, dtype=bias.dtype))

    @torch.no_grad()
    def set_linear_fit(self, fit) -> None:
        """A ``model="linear"`` model's weights from a linear fit (``mean``, ``scale``, ``coef`` (out_dim, D),
        ``intercept``, as :class:`musk.mil.baseline.LinearFit` holds them): mean feature, then report vector."""
        parts = [self.aggregator.standardise] if self.aggregator is not None else []
        parts += [self.text_proj] if self.text_proj is not None else []
        start = 0
        for part in parts:
            part.mean.copy_(torch.as_tensor(fit.mean[start : start + part.out_dim]))
            part.scale.copy_(torch.as_tensor(fit.scale[start : start + part.out_dim]))
            start += part.out_dim
        self.head.weight.copy_(torch.as_tensor(fit.coef))
        self.head.bias.copy_(torch.as_tensor(fit.intercept))

    def set_baseline(self, fit) -> None:
        """The linear baseline's fit (:meth:`set_linear_fit`) that the outputs start from (``from_baseline=True``)."""
        if self.baseline is None:
            raise ValueError("this model does not start from the baseline (from_baseline=False)")
        self.baseline.linear.set_linear_fit(fit)

    def aggregate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One bag (N, D) -> (slide embedding, patch weights (N,)), features standardised first when the model
        does that."""
        if self.aggregator is None:
            raise ValueError("this model reads no slides (fusion 'text_only')")
        return self.aggregator(features if self.feature_norm is None else self.feature_norm(features))

    def forward(
        self, features: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One case: ``features`` (N, D) and/or ``text`` (T,) -> (head output (out_dim,), patch weights or None)."""
        weights = None
        if self.aggregator is not None:
            if features is None:
                raise ValueError("this model reads slide features: pass features")
            slide, weights = self.aggregate(features)
        if self.text_proj is not None:
            if text is None:
                raise ValueError(f"fusion {self.fusion!r} reads the report: pass its embedding")
            report = self.text_proj(text)
        if self.fusion == "none":
            joint = slide
        elif self.fusion == "text_only":
            joint = report
        elif self.fusion == "concat":
            joint = torch.cat([slide, report])
        else:
            gate = torch.sigmoid(self.gate(torch.cat([slide, report])))
            joint = gate * slide + (1 - gate) * report
        out = self.head(joint)
        if self.baseline is not None:
            out = out + self.baseline(features, text)
        return (out if self.bin_bias is None else out + self.bin_bias), weights


class RiskEnsemble(nn.Module):
    """Survival models trained apart, read as one: the mean of their risks, each standardised by the ``centre``
    and ``scale`` of its risks on the training cases (:meth:`set_risk_scales`), so that none outweighs another by
    the spread of its scores. ``member_loss``: what the members' outputs are (``nll``: hazard logits per bin,
    ``cox``: one log-risk). Outputs one risk score, as a Cox model does; a case's patch weights are the members'
    mean, a slide's embedding (:meth:`aggregate`) is theirs side by side."""

    out_dim = 1

    def __init__(self, members: list[MILModel], member_loss: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.member_loss = member_loss
        self.register_buffer("centre", torch.zeros(len(members)))
        self.register_buffer("scale", torch.ones(len(members)))

    @property
    def aggregator(self) -> nn.Module | None:
        return self.members[0].aggregator

    @torch.no_grad()
    def set_risk_scales(self, centre, scale) -> None:
        """Each member's mean and standard deviation of its risks on the training cases."""
        self.centre.copy_(torch.as_tensor(centre))
        self.scale.copy_(torch.as_tensor(scale))

    def member_risks(self, outputs: torch.Tensor) -> torch.Tensor:
        """A member's risks (n,) from its outputs (n, out_dim)."""
        return outputs[:, 0] if self.member_loss == "cox" else hazards_to_risk(outputs)

    def aggregate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, weights = zip(*(member.aggregate(features) for member in self.members), strict=True)
        return torch.cat(pooled), torch.stack(weights).mean(0)

    def forward(
        self, features: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One case -> (its risk (1,), the members' mean patch weights or None)."""
        outputs, weights = zip(*(member(features, text) for member in self.members), strict=True)
        risks = torch.cat([self.member_risks(out[None]) for out in outputs])
        risk = ((risks - self.centre) / self.scale).mean().reshape(1)
        return risk, None if weights[0] is None else torch.stack(weights).mean(0)
