"""timm registration: ``timm.create_model("musk_large_patch16_384")`` builds MUSK."""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .config import MuskConfig
from .loading import load_weights
from .musk import MUSK, default_pretrained_cfg
from .weights import WeightsUnavailableError

DEFAULT_MODEL = "musk_large_patch16_384"

ARCHITECTURES = {
    "musk_large_patch16_384": MuskConfig(),
    "musk_tiny_patch16_64": MuskConfig(embed_dim=64, depth=2, num_heads=4, ffn_dim=256, img_size=64),
}


def _cfg(config: MuskConfig, **kwargs) -> dict:
    return {"url": "", "license": "cc-by-nc-nd-4.0", **default_pretrained_cfg(config), **kwargs}


default_cfgs = generate_default_cfgs(
    {
        "musk_large_patch16_384": _cfg(ARCHITECTURES["musk_large_patch16_384"], hf_hub_id="xiangjx/musk"),
        "musk_tiny_patch16_64": _cfg(ARCHITECTURES["musk_tiny_patch16_64"]),
    }
)


def published_source(architecture: str = DEFAULT_MODEL) -> str | None:
    """Where the published weights of a registered architecture live (``hf_hub:owner/name``), or None."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture)
    if cfg is None:
        return None
    cfg = cfg.to_dict()
    return pretrained_source(cfg) if cfg.get("file") or cfg.get("hf_hub_id") else None


def published_repo() -> str:
    """The hub repository of the published MUSK (its weights and tokenizer)."""
    return published_source(DEFAULT_MODEL).removeprefix("hf_hub:")


def pretrained_source(pretrained_cfg: dict) -> str:
    """Where a model's default weights live: the cfg's ``file`` if set, else its hub repository."""
    if pretrained_cfg.get("file"):
        return pretrained_cfg["file"]
    if pretrained_cfg.get("hf_hub_id"):
        return f"hf_hub:{pretrained_cfg['hf_hub_id']}"
    raise WeightsUnavailableError(
        f"{pretrained_cfg.get('architecture', 'this model')} has no published weights; pass a local file"
    )


def _create(variant: str, pretrained: bool = False, **kwargs) -> MUSK:
    cache_dir = kwargs.pop("cache_dir", None)
    arch = ARCHITECTURES[variant].to_dict()
    model = build_model_with_cfg(
        MUSK, variant, pretrained=False, kwargs_filter=("num_classes", "global_pool"), **{**arch, **kwargs}
    )
    if pretrained:
        load_weights(model, pretrained_source(model.pretrained_cfg), cache_dir=cache_dir)
    return model


@register_model
def musk_large_patch16_384(pretrained: bool = False, **kwargs) -> MUSK:
    """The published MUSK: ViT-L/16 multiway transformer at 384 px (675 M parameters)."""
    return _create("musk_large_patch16_384", pretrained, **kwargs)


@register_model
def musk_tiny_patch16_64(pretrained: bool = False, **kwargs) -> MUSK:
    """A 2-layer, 64-wide MUSK at 64 px for tests and examples (no published weights)."""
    return _create("musk_tiny_patch16_64", pretrained, **kwargs)
