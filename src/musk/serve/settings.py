"""The settings of ``musk serve``, and the rule that keeps an open service off the network."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..models.factory import DEFAULT_MODEL

LOOPBACK_NAMES = ("localhost",)


@dataclass
class ServeSettings:
    """What the service loads, where it listens, and its limits (see ``docs/serve.md``)."""

    index: str | None = None
    model: str = DEFAULT_MODEL
    weights: str = "published"
    tokenizer: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False
    cors_origins: list[str] = field(default_factory=list)
    max_batch: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_mb: float = 20.0
    max_image_pixels: int = 1 << 25
    timeout_s: float = 60.0
    streams: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_body_mb", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.api_key is not None and len(self.api_key) < 16:
            raise ValueError("the API key must be at least 16 characters long (e.g. `openssl rand -hex 32`)")
        if not (is_loopback(self.host) or self.api_key or self.insecure):
            raise ValueError(
                f"--host {self.host} makes the service reachable from other machines: set an API key "
                "(--api_key or MUSK_API_KEY), or pass --insecure to serve without one"
            )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
