"""Where weights come from: the published hub files, a local file or folder, or none (random initialisation).

:func:`resolve` turns what a user wrote (``--weights``, ``weights=``) into a :class:`ResolvedWeights`: the local
file (through huggingface_hub's cache for the hub), and for hub files the repository, revision and file name,
which with the file's SHA-256 make the weights fingerprint every output records.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

HUB_PREFIXES = ("hf_hub:", "hf-hub:")
WEIGHTS_FILE = "model.safetensors"
#: File names tried, in order, when a directory is given as the weights source.
DIRECTORY_CANDIDATES = ("model.safetensors", "pytorch_model.bin", "musk.pth", "model.pth", "checkpoint.pth")
#: ``--weights none``: random initialisation (tests and demos). The one spelling, in every command.
NO_WEIGHTS = "none"
#: ``--weights published`` (the default): the architecture's published weights, from its pretrained_cfg.
PUBLISHED = "published"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_hub_reachable: bool | None = None


class WeightsUnavailableError(RuntimeError):
    """The weights (or tokenizer) could not be obtained: gated, missing, or the hub unreachable."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights as found: ``path`` is the local file (None for random initialisation); hub files also carry
    the repository, the revision (commit) of the cached snapshot and the file name."""

    source: str
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = None

    @property
    def random(self) -> bool:
        return self.path is None

    def describe(self) -> dict:
        """The fingerprint's fields other than the hash (JSON-ready): the file's path, and for hub files the
        repository, revision and file name; ``{"random": True}`` for random initialisation."""
        if self.path is None:
            return {"random": True}
        hub = {"repo_id": self.repo_id, "revision": self.revision, "filename": self.filename}
        return {"path": str(self.path), **{k: v for k, v in hub.items() if v is not None}}


def weights_option(text: str | None) -> str | None:
    """A ``--weights`` value as the library takes it: ``none`` (any case) -> None (random initialisation)."""
    if text is None or text.strip().lower() == NO_WEIGHTS:
        return None
    if text.strip().lower() in ("random", ""):
        raise ValueError(f"--weights {text!r}: random initialisation is spelled --weights {NO_WEIGHTS}")
    return text


def parse_hub_id(source: str) -> str | None:
    """``'hf_hub:owner/name'`` -> ``'owner/name'``; None for anything else."""
    for prefix in HUB_PREFIXES:
        if source.startswith(prefix):
            return source[len(prefix) :]
    return None


def resolve(source: str | os.PathLike | None, published: str | None = None, cache_dir=None) -> ResolvedWeights:
    """The weights ``source`` names: None or ``"none"`` (random), ``"published"`` (``published``, the
    architecture's own source), ``"hf_hub:owner/name"``, a file, or a folder holding one."""
    text = None if source is None else str(source)
    if text is None or text.strip().lower() == NO_WEIGHTS:
        return ResolvedWeights(NO_WEIGHTS)
    if text == PUBLISHED:
        if published is None:
            raise WeightsUnavailableError(
                "this architecture has no published weights: pass a local file (--weights PATH), or --weights none"
            )
        text = published
    repo_id = parse_hub_id(text)
    path = resolve_weights(text, cache_dir)
    if repo_id is None:
        return ResolvedWeights(text, path)
    revision = path.parent.name if path.parent.parent.name == "snapshots" else None
    return ResolvedWeights(text, path, repo_id, revision, WEIGHTS_FILE)


def resolve_weights(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local path of the weights named by ``source``: a hub id, a file, or a directory holding one."""
    repo_id = parse_hub_id(str(source))
    if repo_id is not None:
        return download_from_hub(repo_id, WEIGHTS_FILE, cache_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        for name in DIRECTORY_CANDIDATES:
            if (path / name).is_file():
                return path / name
        raise WeightsUnavailableError(
            f"no weights file in directory {path} (looked for {', '.join(DIRECTORY_CANDIDATES)})"
        )
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {path} does not exist; give a .safetensors/.pth/.bin file, a directory, "
            f"'{PUBLISHED}' or '{NO_WEIGHTS}'"
        )
    return path


def _access_help(repo_id: str, alternative: str) -> str:
    return (
        f"MUSK's files are gated: request access at https://huggingface.co/{repo_id}, then log in with "
        f"`hf auth login` (older huggingface_hub: `huggingface-cli login`) or set HF_TOKEN. Or {alternative}."
    )


def hub_is_reachable() -> bool:
    """Whether the hub's host accepts a connection (asked once per process; assumed so behind a proxy).

    Without it, every lookup of an uncached file would spend about 23 s in huggingface_hub's retries.
    """
    global _hub_reachable
    if _hub_reachable is None:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_VARIABLES):
            _hub_reachable = not constants.HF_HUB_OFFLINE
        else:
            endpoint = urlparse(constants.ENDPOINT)
            port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
            try:
                socket.create_connection((endpoint.hostname, port), timeout=5).close()
                _hub_reachable = True
            except OSError as e:
                logger.info("the hub (%s) is unreachable (%s): using the local cache only", endpoint.hostname, e)
                _hub_reachable = False
    return _hub_reachable


def download_from_hub(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike | None = None,
    alternative: str = "pass a local file (--weights PATH; weights=PATH in Python)",
) -> Path:
    """One file of a hub repository through huggingface_hub's cache (HF_TOKEN and offline mode honoured).

    When the hub cannot be reached, only the cache is looked in, at once. ``alternative`` says what the user
    can pass instead, for the error message.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = {} if hub_is_reachable() else {"local_files_only": True}
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, **offline))
    except GatedRepoError as e:
        reason, cause = f"you have no access to the gated repository {repo_id}", e
    except RepositoryNotFoundError as e:
        reason, cause = f"the repository {repo_id} was not found, or it is gated and you are not logged in", e
    except (LocalEntryNotFoundError, ConnectionError) as e:  # before EntryNotFoundError: a subclass of it
        reason = (
            f"the hub is unreachable (or offline mode is on) and {filename} of {repo_id} is not in the cache "
            f"({cache_dir or 'the default huggingface cache'}); on a machine without network set HF_HUB_OFFLINE=1 "
            "and fill the cache first"
        )
        cause = e
    except EntryNotFoundError as e:
        reason, cause = f"{repo_id} has no file {filename}", e
    except (HfHubHTTPError, OSError) as e:
        reason, cause = f"downloading {filename} from {repo_id} failed ({type(e).__name__}: {e})", e
    raise WeightsUnavailableError(f"Cannot get {filename}: {reason}. {_access_help(repo_id, alternative)}") from cause
