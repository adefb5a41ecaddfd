"""How the processes working on one job share its slides (``accelerate launch``, or independent runs).

Each process takes its own share first (every ``world``-th slide from its ``rank``), then helps with the
others'; a slide is worked on by whoever holds its lock (:mod:`musk.wsi.locks`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Processes"]

T = TypeVar("T")


@dataclass
class Processes:
    """This process's ``rank`` among ``world`` processes; ``state`` is accelerate's under ``accelerate launch``."""

    rank: int = 0
    world: int = 1
    state: object | None = None

    @classmethod
    def current(cls, cpu: bool = False) -> Processes:
        """The processes started together with this one (one, unless ``WORLD_SIZE`` says more)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=cpu)
        return cls(state.process_index, state.num_processes, state)

    def device(self, requested: str) -> object:
        """The device to run on: accelerate's for this process when ``requested`` is ``auto``."""
        return self.state.device if self.state is not None and requested == "auto" else requested

    def work_order(self, items: Sequence[T]) -> list[T]:
        """This process's share first, then the others' to help out."""
        mine = list(items[self.rank :: self.world])
        return mine + [item for item in items if item not in mine]

    def wait_for_everyone(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()
