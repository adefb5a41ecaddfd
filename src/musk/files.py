"""Writing files safely: atomic files and folders, checked targets, JSON and safetensors writers, file hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it only when the block finishes without error.

    A killed or failing job therefore never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder beside ``path`` that replaces ``path`` (whole) when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    tmp.mkdir(mode=0o777)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_file_target(path: str | os.PathLike, label: str, what: str = "file") -> None:
    """``ValueError`` (saying ``label path``) unless a file can be written at ``path``: it is not a folder, no
    file stands where one of its folders would be, and the folder (or the nearest existing one above it) takes
    new files. Run before the work whose result goes there."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{label} {path} is a folder; name a {what} in it")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{label} {path} cannot be created: {blocker} is a file, not a folder")
    check_writable_folder(next(p for p in path.absolute().parents if p.exists()), f"{label} {path}")


def check_writable_folder(folder: str | os.PathLike, label: str) -> None:
    """``ValueError`` saying ``label`` unless a new file can be made in ``folder`` (tried, then removed: the
    permission bits do not tell for root, read-only mounts or full disks)."""
    folder = Path(folder)
    probe = folder / f".musk-write-check-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise ValueError(f"{label}: cannot write in {folder} ({e.strerror or e}); choose another place") from None
    probe.unlink(missing_ok=True)


def safe_filename(name: str) -> str:
    """``name`` made safe as one file name inside a folder of ours: path separators, NUL and other control
    characters become ``_``, as do leading dots (so ``..``, ``.hidden`` or the stem of ``...svs`` stay inside
    the folder and visible); an empty name becomes ``_``."""
    text = "".join("_" if ch in "/\\" or ord(ch) < 32 or ch == "\x7f" else ch for ch in str(name))
    stripped = text.lstrip(".")
    return "_" * (len(text) - len(stripped)) + stripped or "_"


def _new_file_beside(path: Path) -> Path:
    """A new empty file in ``path``'s folder, with the permissions of an ordinary file (0o666 less the umask).

    Not ``tempfile.mkstemp``: its files are private (0o600), and the rename would make every output unreadable
    to the rest of a lab's group.
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as a safetensors file, written atomically with an ordinary file's permissions.

    safetensors' own ``save_file`` makes its file private (0o600), which would hide shared weights from a group.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file; a Hugging Face cache blob is named by it already, so that is read for free."""
    path = Path(path)
    blob = path.resolve()
    if blob.parent.name == "blobs" and _SHA256.match(blob.name):
        return blob.name
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
