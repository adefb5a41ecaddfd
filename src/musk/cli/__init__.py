"""The ``musk`` command: one subcommand per task, each a thin layer over a public function."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..images import ImageLoadError
from ..models import CheckpointMismatchError, WeightsUnavailableError
from . import bench, embed, index, info, mil, pretrain, search, serve, vqa, wsi, zeroshot
from .parser import MuskArgumentParser

SUBCOMMANDS = (info, embed, zeroshot, vqa, wsi, bench, mil, pretrain, index, search, serve)
#: Errors that are the user's to fix: reported in one line, exit status 2.
USER_ERRORS = (
    WeightsUnavailableError,
    CheckpointMismatchError,
    ImageLoadError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
INTERRUPTED = 130


def build_parser() -> MuskArgumentParser:
    parser = MuskArgumentParser(prog="musk", description="MUSK for computational pathology")
    parser.add_argument("--version", action="version", version=f"musk-pathology {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def configure_logging(verbose: bool) -> None:
    """The package's messages on stderr (INFO, or DEBUG with -v); other libraries keep their own handlers."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("musk")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``musk`` with ``argv`` (default: the command line); returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.run(args)
    except USER_ERRORS as e:
        if args.verbose:
            raise
        print(f"musk {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, an I/O error, a read-only mount met while writing
        if args.verbose:
            raise
        print(f"musk {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"musk {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _os_error(e: OSError) -> str:
    what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    advice = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EROFS: "write elsewhere",
        errno.EIO: "check the disk",
    }.get(e.errno, "check the path and try again")
    return f"{what} ({advice})"


if __name__ == "__main__":
    sys.exit(main())
