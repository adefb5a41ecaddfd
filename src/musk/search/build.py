"""Building an index from feature files (resumable), and adding slides to an index without rebuilding it.

Everything is checked before anything is written: the inputs' attributes, the weights that made the features,
the manifest's slide names. A build writes into a staging folder beside the index and records each finished
slide in a journal; a killed build, run again with the same arguments, keeps those slides and goes on. The
staging folder takes the index's name only when it is complete. ``add`` appends to a finished index and
commits by rewriting ``index.json`` atomically, so a killed ``add`` leaves the index as it was.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .backend import Backend, backend_class, open_backend, resolve_kind
from .cases import CaseInfo, check_cases_indexed, read_cases
from .inputs import FeatureHeader, FeatureSource, find_sources, read_chunks, read_header
from .layout import (
    COORDS,
    JOURNAL,
    MANIFEST,
    SLIDE_VECTORS,
    IndexManifest,
    index_lock,
    read_manifest,
    staging_dir,
    write_manifest,
)
from .records import SearchError, SlideRecord
from .store import RowFile

__all__ = ["IndexWriter", "add_to_index", "build_index", "check_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Planned:
    """A slide to index: where its features are and what their file says about them."""

    source: FeatureSource
    header: FeatureHeader


def model_dim(lm) -> int:
    return int(lm.embed_dim)


def check_model(manifest: IndexManifest, lm) -> None:
    """``SearchError`` naming both fingerprints unless ``lm`` has the weights the index was built with."""
    if lm.weights_sha256 != manifest.weights_sha256:
        raise SearchError(
            f"the index was built with weights {manifest.weights_sha256} ({manifest.model}) but the model loaded has "
            f"{lm.weights_sha256} ({lm.architecture}): load the index's weights (--weights)"
        )


def plan_slides(inputs: Sequence[str | os.PathLike], lm) -> list[Planned]:
    """The slides of ``inputs`` with their checked headers: features of ``lm``'s weights, of the right width."""
    dim = model_dim(lm)
    planned = []
    for source in find_sources(inputs):
        header = read_header(source)
        if header.weights_sha256 != lm.weights_sha256:
            raise SearchError(
                f"{source.features} holds features of weights {header.weights_sha256} but the model loaded has "
                f"{lm.weights_sha256} ({lm.architecture}): index them with the weights that made them (--weights)"
            )
        expected = 2 * dim if header.kind == "ms" else dim
        if header.width != expected:
            raise SearchError(
                f"{source.features}: {header.kind} features should be {expected} wide for "
                f"{lm.architecture}, these are {header.width}"
            )
        planned.append(Planned(source, header))
    return planned


def _identity(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class IndexWriter:
    """Appends slides to an index folder and commits them (see the module docstring)."""

    def __init__(self, directory: Path, committed: IndexManifest, backend: Backend):
        self.directory, self.backend = directory, backend
        self.manifest = copy.deepcopy(committed)
        self.coords = RowFile(directory / COORDS, np.int64, 2)
        self.slide_vectors = RowFile(directory / SLIDE_VECTORS, np.float32, committed.dim)

    def rollback(self) -> None:
        """Drop what a killed writer appended after the committed state."""
        self.coords.truncate(self.manifest.rows)
        self.slide_vectors.truncate(self.manifest.next_key)
        self.backend.rollback()

    def add(self, planned: Planned, lm, info: CaseInfo | None) -> SlideRecord:
        """Store one slide and return its record; not yet committed. A slide of the same name is replaced (its
        case and label are kept unless ``info`` gives them)."""
        source, header, m = planned.source, planned.header, self.manifest
        if info is None:
            earlier = next((r for r in m.slides if r.name == source.name), None)
            info = CaseInfo(earlier.case, earlier.label) if earlier is not None else None
        record = SlideRecord(
            name=source.name,
            path=str(source.slide) if source.slide is not None else None,
            case=info.case if info else None,
            label=info.label if info else None,
            patches=header.patches,
            patch_size_level0=header.patch_size_level0,
            magnification=header.magnification,
            key=m.next_key,
            start=m.rows,
            features=str(source.features.resolve()),
            feature_kind=header.kind,
            patch_size=header.patch_size,
            level=header.level,
            read_size=header.read_size,
            mpp=source.mpp,
            source=_identity(source.features),
        )
        total, first = np.zeros(m.dim, dtype=np.float64), 0
        for coords, features in read_chunks(source.features):
            vectors = features if header.kind == "proj" else lm.project_image_features(features)
            vectors = np.asarray(vectors, dtype=np.float32)
            self.coords.append(coords)
            self.backend.append(record, first, vectors)
            total += vectors.sum(0, dtype=np.float64)
            first += len(vectors)
        norm = np.linalg.norm(total)
        self.slide_vectors.append((total / norm if norm > 0 else total).astype(np.float32))
        m.slides = [r for r in m.slides if r.name != record.name] + [record]
        m.rows, m.next_key = m.rows + header.patches, m.next_key + 1
        return record

    def set_cases(self, cases: dict[str, CaseInfo]) -> None:
        self.manifest.slides = [
            replace(r, case=cases[r.name].case, label=cases[r.name].label) if r.name in cases else r
            for r in self.manifest.slides
        ]

    def sync(self) -> None:
        self.coords.sync()
        self.slide_vectors.sync()
        self.backend.flush()

    def commit(self) -> IndexManifest:
        """Make the appended slides part of the index: backend first, then ``index.json`` (atomic), then cleanup."""
        self.coords.sync()
        self.slide_vectors.sync()
        m = self.manifest
        m.generation += 1
        m.slides.sort(key=lambda r: r.name)
        old_state = m.backend_state
        m.backend_state = self.backend.commit(m)
        write_manifest(self.directory, m)
        self.backend.manifest = m
        self.backend.cleanup(old_state)
        return m


def _write_slides(writer: IndexWriter, todo: list[Planned], lm, cases: dict, journal=None, progress=False) -> None:
    for planned in tqdm(todo, desc="indexing", unit="slide", disable=not progress):
        record = writer.add(planned, lm, cases.get(planned.source.name))
        if journal is not None:  # the slide's rows are on disk before the journal says so
            writer.sync()
            journal.write(json.dumps(record.to_dict()) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        logger.debug("indexed %s (%d patches)", record.name, record.patches)


def _new_manifest(lm, backend: str, kind: str, uri: str | None) -> IndexManifest:
    resolve_kind(kind, 0)  # an unknown kind fails here, before anything is written
    return IndexManifest(
        model=lm.architecture,
        weights_sha256=lm.weights_sha256,
        fingerprint=dict(lm.fingerprint),
        dim=model_dim(lm),
        backend=backend,
        kind=kind,
        backend_state=backend_class(backend).initial_state(uri),
    )


def _settings(manifest: IndexManifest) -> dict:
    """What must agree for an interrupted build to be taken up again."""
    state = {k: v for k, v in manifest.backend_state.items() if k == "uri"}
    return {
        "model": manifest.model,
        "weights_sha256": manifest.weights_sha256,
        "dim": manifest.dim,
        "backend": manifest.backend,
        "kind": manifest.kind,
        **state,
    }


def _resumed(staging: Path, fresh: IndexManifest, planned: list[Planned]) -> IndexManifest | None:
    """The state an interrupted build of the same settings and inputs reached (journal), else None."""
    try:
        lines = (staging / JOURNAL).read_text().splitlines()
        header = json.loads(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if {k: header.get(k) for k in _settings(fresh)} != _settings(fresh):
        logger.info("%s holds a build with other settings; starting over", staging)
        return None
    records = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            records.append(SlideRecord.from_dict(json.loads(line)))
        except (ValueError, TypeError):
            if number == len(lines):  # the line a killed build was writing
                break
            return None
    current = {p.source.name: p.source.features for p in planned}
    if any(r.name not in current or r.source != _identity(current[r.name]) for r in records):
        logger.info("the inputs changed since the interrupted build in %s; starting over", staging)
        return None
    resumed = copy.deepcopy(fresh)
    resumed.backend_state = header["backend_state"]
    resumed.slides = records
    resumed.rows = sum(r.patches for r in records)
    resumed.next_key = len(records)
    logger.info("resuming the interrupted build in %s: %d of %d slides done", staging, len(records), len(planned))
    return resumed


def _check_target(index_dir: Path, overwrite: bool) -> None:
    if index_dir.exists() and not index_dir.is_dir():
        raise SearchError(f"{index_dir} is a file; name a folder for the index")
    if index_dir.is_dir() and any(index_dir.iterdir()):
        if not (index_dir / MANIFEST).is_file():
            raise SearchError(f"{index_dir} is a folder that holds no index; name a new or empty folder")
        if not overwrite:
            raise SearchError(
                f"{index_dir} holds an index already: add slides with `musk index add`, or build it "
                "again with --overwrite"
            )


def build_index(
    inputs: Sequence[str | os.PathLike],
    index_dir: str | os.PathLike,
    lm,
    cases: str | os.PathLike | None = None,
    backend: str = "faiss",
    kind: str = "auto",
    uri: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> IndexManifest:
    """Index the slides of ``inputs`` (``musk wsi`` job directories, folders of h5 files, h5 files) into
    ``index_dir``, with cases and labels from the CSV ``cases``. A killed build resumes when run again."""
    index_dir = Path(index_dir).expanduser()
    _check_target(index_dir, overwrite)
    fresh = _new_manifest(lm, backend, kind, uri)
    planned = plan_slides(inputs, lm)
    case_map = read_cases(cases) if cases else {}
    check_cases_indexed(case_map, {p.source.name for p in planned}, cases)
    staging = staging_dir(index_dir)
    staging.mkdir(parents=True, exist_ok=True)
    with index_lock(staging):
        committed = _resumed(staging, fresh, planned)
        if committed is None:
            _clear(staging)
            committed = fresh
            header = {**_settings(fresh), "backend_state": fresh.backend_state}
            (staging / JOURNAL).write_text(json.dumps(header) + "\n")
        writer = IndexWriter(staging, committed, open_backend(staging, committed, uri))
        try:
            writer.rollback()
            done = {r.name for r in committed.slides}
            with open(staging / JOURNAL, "a") as journal:
                todo = [p for p in planned if p.source.name not in done]
                _write_slides(writer, todo, lm, case_map, journal, progress)
            writer.set_cases(case_map)
            manifest = writer.commit()
        finally:
            writer.backend.close()
    _swap(staging, index_dir)
    logger.info("indexed %d slides (%d vectors) into %s", len(manifest.slides), manifest.vectors, index_dir)
    return manifest


def _clear(staging: Path) -> None:
    """Empty the staging folder (an earlier, different build's leftovers), keeping the lock file."""
    for path in staging.iterdir():
        if path.name != ".lock":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _swap(staging: Path, index_dir: Path) -> None:
    """Put the finished build in place of ``index_dir`` (whose remote data, if any, is then removed)."""
    old = None
    if index_dir.exists():
        old = index_dir.with_name(f".{index_dir.name}.old-{secrets.token_hex(4)}")
        os.replace(index_dir, old)
    os.replace(staging, index_dir)
    (index_dir / JOURNAL).unlink(missing_ok=True)
    if old is not None:
        if (old / MANIFEST).is_file():
            previous = read_manifest(old)
            stale = open_backend(old, previous)
            try:
                stale.destroy()
            finally:
                stale.close()
        shutil.rmtree(old, ignore_errors=True)


def add_to_index(
    index_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    lm,
    cases: str | os.PathLike | None = None,
    progress: bool = False,
) -> IndexManifest:
    """Add the slides of ``inputs`` to the index (a slide already there is replaced); the CSV ``cases`` may also
    set the case and label of slides already indexed."""
    index_dir = Path(index_dir).expanduser()
    committed = read_manifest(index_dir)
    check_model(committed, lm)
    planned = plan_slides(inputs, lm)
    case_map = read_cases(cases) if cases else {}
    check_cases_indexed(case_map, {p.source.name for p in planned} | {r.name for r in committed.slides}, cases)
    with index_lock(index_dir):
        committed = read_manifest(index_dir)  # as it is now that this process holds the lock
        writer = IndexWriter(index_dir, committed, open_backend(index_dir, committed))
        try:
            writer.rollback()
            _write_slides(writer, planned, lm, case_map, progress=progress)
            writer.set_cases(case_map)
            manifest = writer.commit()
        finally:
            writer.backend.close()
    logger.info(
        "added %d slides to %s: %d slides, %d vectors", len(planned), index_dir, len(manifest.slides), manifest.vectors
    )
    return manifest
