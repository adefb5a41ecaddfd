"""The ``musk`` argument parser: a mistyped option is reported as such, not as the required one it missed."""

from __future__ import annotations

import argparse
import difflib

__all__ = ["MuskArgumentParser"]


class MuskArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that, when required options are missing, first names any option it does
    not know (``--outptu`` for ``--output``), with the closest known one."""

    def parse_known_args(self, args=None, namespace=None):
        self._seen_args = list(args) if args is not None else None
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        unknown = self._unknown_options() if message.startswith("the following arguments are required") else []
        if unknown:
            known = [s for s in self._option_string_actions if s.startswith("--")]
            hints = [f"{u} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(u, known, n=1)) else u
                     for u in unknown]  # fmt: skip
            message = f"unrecognized arguments: {' '.join(hints)}"
        super().error(message)

    def _unknown_options(self) -> list[str]:
        options = [a.partition("=")[0] for a in getattr(self, "_seen_args", None) or [] if a.startswith("-")]
        return [o for o in options if o not in ("-", "--") and not self._get_option_tuples(o) and
                o not in self._option_string_actions]  # fmt: skip
