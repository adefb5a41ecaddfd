"""Slide-level training speed: seconds per epoch, peak memory and the share of time spent waiting for bags.

    python benchmarks/mil_train.py --n_bags 1000 --patches 2000 --dim 1024 --storage float16 --num_workers 2

Generates ``n_bags`` h5 feature files (docs/architecture.md, "On-disk formats": ``coords``, ``features``, attributes) in
a temporary folder, trains ABMIL on them reading every bag from disk each epoch (no in-memory cache), and
deletes the folder. ``--storage float16`` halves the disk footprint (1,000 x 2,000 x 1,024 is 8.2 GB as
float32, 4.1 GB as float16); the reader converts to float32, so the model sees the same numbers either way.

Printed, all measured in this run: the raw bag read rate (bags/s, reading each file once), the training rate
(bags/s), seconds per epoch, the fraction of each epoch spent waiting for the next batch, and the process's
peak resident memory. The files were just written, so reads are served largely from the page cache: a
cold network disk reads slower than this.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from musk.mil import FitOptions, MILModel, fit_model
from musk.mil.data import BagDataset, read_bag
from musk.mil.manifest import Case, Cohort


def write_bags(folder: Path, n_bags: int, patches: int, dim: int, storage: str, seed: int) -> list[str]:
    """``n_bags`` feature files whose first 5% of patches carry the label (planted along one direction)."""
    rng = np.random.default_rng(seed)
    names = []
    coords = np.stack([np.arange(patches) % 64, np.arange(patches) // 64], 1).astype(np.int64) * 256
    direction = np.zeros(dim, np.float32)
    direction[:8] = 1.0
    for i in range(n_bags):
        x = rng.standard_normal((patches, dim), dtype=np.float32)
        if i % 2:
            x[: patches // 20] += direction
        name = f"bag{i:05d}"
        tmp = folder / f".{name}.partial.h5"
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=coords)
            f.create_dataset("features", data=x.astype(storage))
            f.attrs.update({"patch_size": 256, "patch_size_level0": 256, "name": name, "encoder": "generated"})
        tmp.rename(folder / f"{name}.h5")
        names.append(name)
    return names


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_bags", type=int, default=1000)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--storage", choices=("float16", "float32"), default="float16")
    parser.add_argument("--model", choices=("abmil", "mean", "transmil"), default="abmil")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--tmp_dir", default=None, help="where the bags are written (default: the system temp)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = Path(tempfile.mkdtemp(prefix="musk-mil-bench-", dir=args.tmp_dir))
    try:
        start = time.perf_counter()
        names = write_bags(folder, args.n_bags, args.patches, args.dim, args.storage, args.seed)
        written = time.perf_counter() - start
        size_gb = sum(p.stat().st_size for p in folder.glob("*.h5")) / 1e9
        print(f"wrote {len(names)} bags ({size_gb:.2f} GB, {args.storage}) in {written:.1f} s")

        start = time.perf_counter()
        for name in names:
            read_bag(folder, [name])
        read_rate = len(names) / (time.perf_counter() - start)

        cases = [Case(name, [name], label=i % 2) for i, name in enumerate(names)]
        dataset = BagDataset(Cohort("classification", cases, ["0", "1"]), folder, cache=False)
        model = MILModel(2, args.dim, model=args.model, hidden=args.hidden).to(args.device)
        options = FitOptions(
            epochs=args.epochs,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            precision=args.precision,
            patience=0,
        )
        result = fit_model(model, dataset, np.arange(len(names)), np.arange(0), options)
        print(f"device {args.device}, {torch.get_num_threads()} threads, {args.num_workers} loader workers")
        print(f"raw read rate: {read_rate:.1f} bags/s (each file once, one process)")
        for entry in result.history:
            epoch_s = entry["data_s"] + entry["compute_s"]
            print(
                f"epoch {entry['epoch']}: {epoch_s:.1f} s ({len(names) / epoch_s:.1f} bags/s), "
                f"waiting for data {entry['data_s']:.1f} s = {entry['data_s'] / epoch_s:.1%} of the epoch, "
                f"train loss {entry['train_loss']:.3f}"
            )
        last = result.history[-1]
        train_rate = len(names) / (last["data_s"] + last["compute_s"])
        print(f"read rate / training rate: {read_rate / train_rate:.1f}x (above 1: loading keeps up)")
        print(f"peak resident memory: {peak_rss_mib():.0f} MiB (this process; loader workers not counted)")
        if torch.cuda.is_available() and str(args.device).startswith("cuda"):
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
