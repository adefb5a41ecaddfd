"""Decoded image pixels in memory shared with DataLoader workers: decoded once, mapped by every worker."""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SharedPixels"]


class SharedPixels:
    """(height, width, 3) uint8 pixels in shared memory: an anonymous in-memory file on Linux (``memfd``), a
    temporary file elsewhere. Pickled (to a spawned worker) it is mapped again, read-only, not copied; a forked
    worker inherits the mapping. The memory is freed when the process that made it closes it or lets it go (on
    Linux also when that process is killed)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = tuple(shape)
        temporary = None
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("musk-slide-pixels")
            self.location = f"/proc/{os.getpid()}/fd/{fd}"
        else:
            fd, temporary = tempfile.mkstemp(prefix="musk-slide-pixels-")
            self.location = temporary
        self._release = weakref.finalize(self, _release, fd, temporary, os.getpid())
        os.ftruncate(fd, self._nbytes)
        self._map = mmap.mmap(fd, self._nbytes)
        self.array = np.ndarray(self.shape, dtype=np.uint8, buffer=self._map)

    @property
    def _nbytes(self) -> int:
        return max(1, int(np.prod(self.shape)))

    @classmethod
    def of(cls, image: Image.Image) -> SharedPixels:
        """The pixels of an RGB image, copied in bands (no second full copy in ordinary memory)."""
        shared = cls((image.height, image.width, 3))
        band = max(1, (64 << 20) // max(1, 3 * image.width))
        for top in range(0, image.height, band):
            bottom = min(top + band, image.height)
            shared.array[top:bottom] = np.asarray(image.crop((0, top, image.width, bottom)))
        return shared

    def __getstate__(self) -> dict:
        return {"shape": self.shape, "location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.shape, self.location = state["shape"], state["location"]
        self._release = None
        fd = os.open(self.location, os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, self._nbytes, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.array = np.ndarray(self.shape, dtype=np.uint8, buffer=self._map)

    def close(self) -> None:
        """Unmap the pixels; the process that made them also frees them."""
        self.array = None
        try:
            self._map.close()
        except BufferError:  # a view of the pixels is still held somewhere: unmapped when it goes
            pass
        if self._release is not None:
            self._release()


def _release(fd: int, temporary: str | None, owner: int) -> None:
    """Free shared pixels, in the process that made them (a forked worker holds a copy of the finalizer)."""
    if os.getpid() != owner:
        return
    os.close(fd)
    if temporary is not None:
        Path(temporary).unlink(missing_ok=True)
