"""One slide through a job's stages: segment, patch, extract, heatmap.

Each output is made only when it is missing or damaged (a cheap check of its header: a file under its final
name is complete unless something outside the job broke it), and the slide file is opened only when a stage
needs it. A slide that fails is recorded with the reason; the caller goes on with the next one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from PIL import Image

from .. import __version__
from ..files import write_json
from .config import STAGE_SETTINGS, WsiJobConfig
from .h5 import patch_file_problem, read_patch_file, write_patch_file
from .layout import JobLayout
from .leftovers import remove_slide_leftovers
from .model import JobModel
from .patching import PatchGrid, plan_patches
from .readers import SlideReader, open_slide
from .records import read_record
from .slides import SlideEntry
from .tissue import TissueMask, contour_overlay, save_png, segment_tissue

__all__ = ["SlidePipeline"]

logger = logging.getLogger(__name__)


class _SlideOnDemand:
    """A slide's reader, opened when first asked for and closed with the block."""

    def __init__(self, entry: SlideEntry, config: WsiJobConfig):
        self.entry, self.config = entry, config
        self._reader: SlideReader | None = None

    def __call__(self) -> SlideReader:
        if self._reader is None:
            mpp = self.entry.mpp if self.entry.mpp is not None else self.config.mpp
            self._reader = open_slide(self.entry.path, mpp, max_pixels=self.config.max_pixels)
        return self._reader

    def __enter__(self) -> _SlideOnDemand:
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.close()


class SlidePipeline:
    """The stages of one job, run on a slide at a time."""

    def __init__(self, layout: JobLayout, config: WsiJobConfig, stages: Sequence[str], model: JobModel | None):
        self.layout, self.config, self.stages, self.model = layout, config, tuple(stages), model

    # ---- what is done ------------------------------------------------------------------------
    def problem(self, folder: str, name: str) -> str | None:
        """What is wrong with the slide's output in ``folder`` (masks, patches or features): None when it is there
        and sound, else ``"missing"`` or the damage found."""
        path = self.layout.slide_file(folder, name)
        if folder == "masks":
            return _png_problem(path)
        return patch_file_problem(path, ("features",) if folder == "features" else ())

    def sound(self, folder: str, name: str) -> bool:
        return self.problem(folder, name) is None

    def _to_make(self, folder: str, name: str) -> bool:
        """Whether the output in ``folder`` has to be made (again: a damaged one is said so)."""
        problem = self.problem(folder, name)
        if problem not in (None, "missing"):
            logger.warning("%s is damaged (%s): making it again", self.layout.slide_file(folder, name), problem)
        return problem is not None

    def has_heatmaps(self, name: str) -> bool:
        """Whether the slide's maps are of this run's classes, templates and tokenizer (else they are redone)."""
        from .zeroshot_map import has_zeroshot_map

        cfg = self.config
        return has_zeroshot_map(self.layout.slide_file("features", name), cfg.classes, self.layout.heatmaps(name),
                                cfg.templates, self.model.tokenizer_sha256)  # fmt: skip

    def outputs_done(self, name: str) -> bool:
        checks = {
            "segment": lambda: self.sound("masks", name),
            "patch": lambda: self.sound("patches", name),
            "extract": lambda: self.sound("features", name),
            "heatmap": lambda: self.has_heatmaps(name),
        }
        return all(checks[stage]() for stage in self.stages)

    def finished(self, name: str) -> bool:
        """Whether the slide's outputs and its record exist (one killed between the two is taken up again, which
        removes its leftovers and writes the record without redoing the outputs)."""
        return self.layout.slide_file("status", name).is_file() and self.outputs_done(name)

    def record(self, name: str, verify: bool = False) -> dict:
        """The slide's record; ``verify`` checks its outputs too (slower): a slide killed after its outputs and
        before its record counts as done, one whose outputs are gone or damaged as pending."""
        record = read_record(self.layout, name)
        if verify:
            done = self.outputs_done(name)
            if done and record["status"] != "done":
                patches = read_patch_file(self.layout.slide_file("patches", name), arrays=()).coords
                record.update(status="done", patches=len(patches), error="")
            elif not done and record["status"] != "failed":
                record.update(status="pending", patches="", seconds="", error="")
        return record | {"status": record["status"] or "pending"}

    # ---- doing it ----------------------------------------------------------------------------
    def process(self, entry: SlideEntry, rank: int = 0) -> dict:
        """Run the stages on one slide (hold its lock) and write its record; a failure is recorded, not raised."""
        start = time.perf_counter()
        remove_slide_leftovers(self.layout, entry.name)
        record = {"slide": entry.name, "status": "done", "patches": "", "seconds": "", "error": ""}
        try:
            with _SlideOnDemand(entry, self.config) as slide:
                patches = self.run_stages(entry, slide)
            record["patches"] = "" if patches is None else patches
        except Exception as e:  # noqa: BLE001 - one bad slide must not stop the job
            logger.error("slide %s failed: %s", entry.path, e)
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
        record["seconds"] = round(time.perf_counter() - start, 3)
        write_json(self.layout.slide_file("status", entry.name), {**record, "process": rank})
        return record

    def run_stages(self, entry: SlideEntry, slide: _SlideOnDemand) -> int | None:
        """The slide's outputs that are missing or damaged; returns its number of patches (None: segment only)."""
        name = entry.name
        tissue = self.segment(name, slide()) if self._to_make("masks", name) else None
        if self.stages == ("segment",):
            return None
        if self._to_make("patches", name):
            grid = self.patch(name, slide(), tissue)
        else:
            stored = read_patch_file(self.layout.slide_file("patches", name))
            grid = PatchGrid.from_attrs(stored.coords, stored.attrs)
        if "extract" in self.stages and self._to_make("features", name):
            self.extract(name, slide(), grid)
        if "heatmap" in self.stages and not self.has_heatmaps(name):
            self.heatmap(name)
        return len(grid.coords)

    def segment(self, name: str, reader: SlideReader) -> TissueMask:
        cfg = self.config
        thumbnail = reader.thumbnail(cfg.thumbnail_size)
        settings = {k: getattr(cfg, k) for k in STAGE_SETTINGS["segment"] if k not in ("mpp", "thumbnail_size")}
        tissue = segment_tissue(thumbnail, reader.dimensions, reader.mpp, **settings)
        save_png(thumbnail, self.layout.slide_file("thumbnails", name))
        save_png(contour_overlay(thumbnail, tissue.mask), self.layout.slide_file("contours", name))
        tissue.save(self.layout.slide_file("masks", name))  # last: its presence means the segment stage is complete
        return tissue

    def patch(self, name: str, reader: SlideReader, tissue: TissueMask | None) -> PatchGrid:
        cfg = self.config
        if tissue is None:
            tissue = TissueMask.load(self.layout.slide_file("masks", name), reader.dimensions)
        grid = plan_patches(reader, tissue, patch_size=cfg.patch_size, magnification=cfg.magnification,
                            mpp=cfg.target_mpp, overlap=cfg.overlap, min_tissue=cfg.min_tissue)  # fmt: skip
        write_patch_file(self.layout.slide_file("patches", name), grid.coords, attrs=grid.attrs(reader, name))
        return grid

    def extract(self, name: str, reader: SlideReader, grid: PatchGrid) -> None:
        from .extract import extract_slide_features

        cfg = self.config
        features = extract_slide_features(
            self.model.loaded.model, reader, grid, cfg.features, batch_size=cfg.batch_size,
            num_workers=cfg.num_workers, progress=cfg.progress, streams=cfg.streams,
        )  # fmt: skip
        attrs = {
            **grid.attrs(reader, name),
            "encoder": cfg.model,
            "weights_sha256": self.model.weights_sha256,
            "feature_kind": cfg.features,
            "precision": cfg.precision,
            "package_version": __version__,
        }
        write_patch_file(self.layout.slide_file("features", name), grid.coords, {"features": features}, attrs)

    def heatmap(self, name: str) -> None:
        from .zeroshot_map import add_zeroshot_map

        cfg, model = self.config, self.model
        with Image.open(self.layout.slide_file("thumbnails", name)) as thumbnail:
            add_zeroshot_map(model.loaded.model, self.layout.slide_file("features", name), model.class_embeddings,
                             list(cfg.classes), thumbnail.convert("RGB"), self.layout.heatmaps(name),
                             list(cfg.templates), model.tokenizer_sha256)  # fmt: skip


def _png_problem(path) -> str | None:
    """What is wrong with the PNG at ``path`` (None: nothing): missing, or not a complete PNG."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as image:
            image.verify()  # the chunks and their checksums; small for a mask
    except Exception as e:  # noqa: BLE001 - Pillow reports damage through many exception types
        return f"not a readable PNG ({type(e).__name__}: {e})"
    return None
