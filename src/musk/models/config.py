"""Architecture hyper-parameters of a MUSK multiway transformer."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MuskConfig:
    """Shape of the model; the defaults are the published ``musk_large_patch16_384``."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096
    img_size: int = 384
    patch_size: int = 16
    in_chans: int = 3
    vocab_size: int = 64010
    max_text_positions: int = 1024
    layer_norm_eps: float = 1e-5
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def max_text_len(self) -> int:
        """Longest text the position table can hold (positions start at 2)."""
        return self.max_text_positions - 2

    def to_dict(self) -> dict:
        return asdict(self)
