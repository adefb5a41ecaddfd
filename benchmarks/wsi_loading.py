"""Patch loading rate of musk.wsi (read + resize + normalise, no model) against a bare OpenSlide loop.

    python benchmarks/wsi_loading.py [--slide SLIDE] [--mag 20] [--patch_size 384] [--workers 1 2]

The bare loop is what a hand-written extractor does in one process (one torch thread, as in a worker):
``OpenSlide.read_region``, drop alpha,
to a float tensor, stack into batches. The package loader (``SlidePatchDataset`` in a ``DataLoader``) does that
plus the white background for unscanned areas, the resize to ``patch_size`` and the model's normalisation
(MUSK-large preprocessing: 384 px, mean = std = 0.5). Both read the same patches of the same slide in the
same run, alternating, best of ``--repeats``. Printed: patches/s of each, the loader's rate per worker as a
fraction of the bare loop's, and the speed-up from 1 worker to N. Default slide: CMU-1-Small-Region (fetched
by scripts/fetch_sample_slide.py), patches cycled until ``--patches`` are read.

``--plain_image N`` measures instead a plain-image slide (a synthetic N x N PNG): the loader given the file,
where every worker decodes the whole image, against the loader given the slide opened once, whose decoded
pixels the workers share (what ``extract_slide_features`` and ``musk wsi`` do), that one decode included.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader

from musk.models.config import MuskConfig
from musk.models.musk import default_pretrained_cfg
from musk.wsi.dataset import PatchPreprocessing, SlidePatchDataset
from musk.wsi.patching import PatchGrid, plan_patches
from musk.wsi.readers import open_slide
from musk.wsi.tissue import segment_tissue

REPO = Path(__file__).resolve().parents[1]


def default_slide() -> Path:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_sample_slide.py")], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


def bare_loop(slide: Path, coords: np.ndarray, level: int, size: int, batch_size: int) -> float:
    """Patches/s of read_region -> RGB -> float tensor -> batches, in this process (one thread, as a worker has)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    handle = openslide.OpenSlide(str(slide))
    start = time.perf_counter()
    batch = []
    for x, y in coords:
        region = handle.read_region((int(x), int(y)), level, (size, size)).convert("RGB")
        batch.append(torch.from_numpy(np.asarray(region).copy()).permute(2, 0, 1).float().div_(255))
        if len(batch) == batch_size:
            torch.stack(batch)
            batch = []
    if batch:
        torch.stack(batch)
    rate = len(coords) / (time.perf_counter() - start)
    handle.close()
    torch.set_num_threads(threads)
    return rate


def package_loader(slide: Path, grid, batch_size: int, workers: int) -> float:
    """Patches/s of musk.wsi's dataset in a DataLoader with ``workers`` processes (worker start-up included)."""
    preprocessing = PatchPreprocessing(default_pretrained_cfg(MuskConfig()))
    loader = DataLoader(SlidePatchDataset(slide, grid, preprocessing), batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(preprocessing.normalise(batch)) for batch in loader)  # normalised here, as on the device
    return count / (time.perf_counter() - start)


def plain_image(folder: Path, side: int) -> Path:
    """A side x side PNG of smooth stain-like texture (compresses like a scan, decodes at full cost)."""
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    pixels = np.stack([200 + 30 * np.sin(x / 37), 120 + 40 * np.cos(y / 23), 170 + 20 * np.sin((x + y) / 51)], -1)
    path = folder / "plain.png"
    Image.fromarray(pixels.astype(np.uint8)).save(path, compress_level=1)
    return path


def compare_plain_image(side: int, args: argparse.Namespace) -> None:
    """Seconds for one pass over the patches: workers decoding the file vs sharing one decode."""
    preprocessing = PatchPreprocessing(default_pretrained_cfg(MuskConfig()))
    with tempfile.TemporaryDirectory() as folder:
        path = plain_image(Path(folder), side)
        step = args.patch_size
        xs = np.arange(0, side - step + 1, step)
        coords = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)[: args.patches]
        grid = PatchGrid(coords, step, step, 0, step, None, 0.5, 0, 0.0)
        print(f"plain image {side}x{side} ({path.stat().st_size / 1e6:.1f} MB PNG), {len(coords)} patches of {step} px")
        for workers in args.workers:
            per_worker, shared = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                loader = DataLoader(SlidePatchDataset(path, grid, preprocessing, mpp=0.5), args.batch_size,
                                    num_workers=workers)  # fmt: skip
                sum(len(batch) for batch in loader)
                per_worker.append(time.perf_counter() - start)
                start = time.perf_counter()
                with open_slide(path, mpp=0.5, max_pixels=None) as reader:
                    loader = DataLoader(SlidePatchDataset(reader, grid, preprocessing), args.batch_size,
                                        num_workers=workers)  # fmt: skip
                    sum(len(batch) for batch in loader)
                shared.append(time.perf_counter() - start)
            print(f"{workers} worker(s): each decoding the file {min(per_worker):6.2f} s; one shared decode "
                  f"{min(shared):6.2f} s = {min(per_worker) / min(shared):.2f}x faster")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, default=None, help="default: CMU-1-Small-Region")
    parser.add_argument("--mag", type=float, default=20.0)
    parser.add_argument("--patch_size", type=int, default=384)
    parser.add_argument("--patches", type=int, default=600, help="patches per measurement (cycled)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain_image", type=int, default=None, metavar="N", help="measure an N x N PNG instead")
    args = parser.parse_args()
    if args.plain_image:
        compare_plain_image(args.plain_image, args)
        return

    slide = args.slide or default_slide()
    with open_slide(slide) as reader:
        tissue = segment_tissue(reader.thumbnail(1024), reader.dimensions, reader.mpp)
        grid = plan_patches(reader, tissue, patch_size=args.patch_size, magnification=args.mag, min_tissue=0.0)
        print(f"slide {slide.name}: {reader.dimensions[0]}x{reader.dimensions[1]}, {reader.mpp:.3f} mpp; "
              f"{len(grid.coords)} patches of {args.patch_size} px at {args.mag:g}x "
              f"(read {grid.read_size} px at level {grid.level})")  # fmt: skip
    if len(grid.coords) == 0:
        raise SystemExit("no tissue patches on this slide")
    grid.coords = np.resize(grid.coords, (args.patches, 2))  # cycle through the patches
    bare, loader = [], {w: [] for w in args.workers}
    for _ in range(args.repeats):
        bare.append(bare_loop(slide, grid.coords, grid.level, grid.read_size, args.batch_size))
        for workers in args.workers:
            loader[workers].append(package_loader(slide, grid, args.batch_size, workers))
    best_bare = max(bare)
    print(f"bare OpenSlide loop (1 process): {best_bare:8.1f} patches/s")
    first = args.workers[0]
    for workers in args.workers:
        rate = max(loader[workers])
        per_worker = rate / workers
        print(f"musk.wsi loader, {workers} worker(s): {rate:8.1f} patches/s = {per_worker / best_bare:.2f} of the bare "
              f"loop per worker; {rate / max(loader[first]):.2f}x the {first}-worker rate")  # fmt: skip
    print(f"(machine: {len(os.sched_getaffinity(0))} cores available to this process)")


if __name__ == "__main__":
    main()
