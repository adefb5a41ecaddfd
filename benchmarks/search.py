"""Speed and scale of musk.search on clustered synthetic vectors: build rate, query latency, recall, bytes.

    nice python benchmarks/search.py [--vectors 1000000] [--dim 1024] [--kinds flat ivfpq hnsw]
                                     [--hnsw_vectors 200000] [--queries 200] [--workdir DIR]

The vectors imitate MUSK's projected patch features at archive scale: ``--clusters`` cluster centres on the unit
sphere; a cluster's patches vary around its centre in a 16-dimensional subspace of its own (deep features have a
low intrinsic dimension) plus a little isotropic noise, and are L2-normalised; every slide mixes patches of 40
clusters. They are written as h5 feature files (``proj`` kind), 1000 patches a slide, and indexed by
``build_index`` exactly as `musk index build` does (reading the h5 files one at a time). Queries are further
vectors of the same distribution (image-like) and vectors far from every patch (text-like). Printed per kind: the
build rate (vectors/s, from the h5 files to a finished index), the latency of one query (``search_vector``,
k=10: p50 and p95 over ``--queries``), recall@10 against exact search on the same queries, and bytes per vector
(the search structure in memory, and everything on disk).
With ``--text`` the end-to-end text query (encode with a random-weights MUSK of that size + search) is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from musk.search import backend_faiss as faiss_backend
from musk.search import build_index, open_index
from musk.search.backend_faiss import exact_top_k
from musk.wsi.h5 import write_patch_file

PATCHES_PER_SLIDE = 1000
#: A cluster's patches vary in a subspace of this many dimensions, by about SPREAD (the centre has norm 1).
INTRINSIC, SPREAD, NOISE = 16, 0.8, 0.05


class SyntheticModel:
    """What build_index needs of a loaded model when the features are already projected."""

    architecture = "synthetic"
    weights_sha256 = "synthetic"

    def __init__(self, dim: int):
        self.embed_dim = dim
        self.fingerprint = {"sha256": self.weights_sha256, "random": True}


def clustered(rng, centres: np.ndarray, bases: np.ndarray, n: int) -> np.ndarray:
    """``n`` unit vectors around random ``centres``, each spread in its cluster's own low-dimensional subspace
    (``bases``) plus a little isotropic noise."""
    c = rng.integers(0, len(centres), n)
    z = rng.normal(0, SPREAD / np.sqrt(bases.shape[1]), (n, bases.shape[1]))
    x = (
        centres[c]
        + np.einsum("ni,nid->nd", z, bases[c])
        + rng.normal(0, NOISE / np.sqrt(centres.shape[1]), (n, centres.shape[1]))
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_cohort(folder: Path, vectors: int, dim: int, clusters: int, seed: int) -> tuple[list[Path], dict]:
    """h5 files of ``vectors`` clustered unit vectors, and two query sets: ``image_like`` (held-out vectors of the
    same distribution) and ``text_like`` (far from every patch, as a text's embedding is: a cosine of about 0.4
    with a cluster centre)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.normal(0, 1 / np.sqrt(dim), (clusters, INTRINSIC, dim)).astype(np.float32)
    files = []
    grid = np.stack(np.meshgrid(np.arange(40), np.arange(25)), -1).reshape(-1, 2) * 256
    for s in range(-(-vectors // PATCHES_PER_SLIDE)):
        n = min(PATCHES_PER_SLIDE, vectors - s * PATCHES_PER_SLIDE)
        slide_rng = np.random.default_rng([seed, s])
        own = slide_rng.choice(clusters, min(40, clusters), replace=False)
        features = clustered(slide_rng, centres[own], bases[own], n)
        attrs = {
            "feature_kind": "proj",
            "weights_sha256": "synthetic",
            "patch_size": 256,
            "patch_size_level0": 256,
            "target_magnification": 20.0,
            "name": f"slide{s:05d}",
        }
        files.append(write_patch_file(folder / f"slide{s:05d}.h5", grid[:n], {"features": features}, attrs))
    near = clustered(rng, centres, bases, 1000)
    far = 0.4 * centres[rng.integers(0, clusters, 1000)] + rng.normal(0, 0.8 / np.sqrt(dim), (1000, dim))
    return files, {
        "image_like": near,
        "text_like": (far / np.linalg.norm(far, axis=1, keepdims=True)).astype(np.float32),
    }


def exact_truth(index, queries: np.ndarray, k: int) -> list[set]:
    blocks = index.backend._blocks(index.backend._ranges(None))
    _, rows = exact_top_k(blocks, queries, k)
    ids = index.backend._ids(rows)
    return [set(row.tolist()) for row in ids]


def measure(index, queries: np.ndarray, truth: list[set], k: int = 10) -> dict:
    """Wall-clock latency of one query (p50, p95), the CPU time it took (what it costs on a core of its own: the
    development machine is shared), and recall@k."""
    for q in queries[:10]:  # warm the caches
        index.search_vector(q, k)
    wall, cpu, found = [], [], []
    for q in queries:
        start, start_cpu = time.perf_counter(), time.thread_time()
        hits = index.search_vector(q, k)
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
        found.append(hits)
    ids = [{_hit_id(index, h) for h in hits} for hits in found]
    recall = float(np.mean([len(a & t) / k for a, t in zip(ids, truth, strict=True)]))
    wall_ms, cpu_ms = np.array(wall) * 1000, np.array(cpu) * 1000
    return {
        "p50_ms": round(float(np.percentile(wall_ms, 50)), 2),
        "p95_ms": round(float(np.percentile(wall_ms, 95)), 2),
        "cpu_p50_ms": round(float(np.percentile(cpu_ms, 50)), 2),
        "cpu_p95_ms": round(float(np.percentile(cpu_ms, 95)), 2),
        "recall@10": round(recall, 4),
    }


def _hit_id(index, hit) -> int:
    record = index.slide(hit.slide)
    coords = index.coords(record)
    patch = int(np.flatnonzero((coords[:, 0] == hit.x) & (coords[:, 1] == hit.y))[0])
    return (record.key << 32) | patch


def bytes_per_vector(path: Path, vectors: int, ann: str | None) -> dict:
    disk = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    memory = (path / ann).stat().st_size if ann else (path / "vectors.f32").stat().st_size
    return {"index_bytes_per_vector": round(memory / vectors, 1), "disk_bytes_per_vector": round(disk / vectors, 1)}


def bench_kind(kind: str, files: list[Path], work: Path, queries: np.ndarray, dim: int, args) -> dict:
    target = work / f"index_{kind}"
    start = time.perf_counter()
    manifest = build_index(files, target, SyntheticModel(dim), kind=kind)
    build = time.perf_counter() - start
    out = {
        "kind": kind,
        "vectors": manifest.vectors,
        "build_s": round(build, 1),
        "build_vectors_per_s": round(manifest.vectors / build),
    }
    out |= bytes_per_vector(target, manifest.vectors, manifest.backend_state.get("ann"))
    with open_index(target) as index:
        for name, vectors in queries.items():
            start = time.perf_counter()
            truth = exact_truth(index, vectors, 10)
            out[name] = {"exact_batch_s": round(time.perf_counter() - start, 1), **measure(index, vectors, truth)}
            if kind == "ivfpq" and args.nprobe:
                out[name]["sweep"] = sweep(index, vectors, truth, args)
        if args.text:
            out["text"] = text_end_to_end(index, args)
    shutil.rmtree(target)
    return out


def sweep(index, queries, truth, args) -> list[dict]:
    """Latency and recall for other probe counts and re-ranking depths (the defaults are in backend_faiss)."""
    results = []
    defaults = (index.backend.ann.nprobe, faiss_backend.RERANK_MIN)
    for nprobe in args.nprobe:
        for rerank in args.rerank:
            index.backend.ann.nprobe, faiss_backend.RERANK_MIN = nprobe, rerank
            results.append({"nprobe": nprobe, "rerank": rerank, **measure(index, queries, truth)})
    index.backend.ann.nprobe, faiss_backend.RERANK_MIN = defaults
    return results


def text_end_to_end(index, args) -> dict:
    """Encode a text with a random-weights MUSK of the index's width, then search: p50/p95 of the whole query."""
    import musk

    lm = musk.load(args.text, "none", device="cpu", tokenizer=args.tokenizer)
    texts = [f"histopathology image of {w}" for w in ("tumor", "stroma", "necrosis", "mucin", "fat", "lymphocytes")]
    lm.embed_texts(texts[:1])
    encode, total = [], []
    for text in texts * 4:
        start = time.perf_counter()
        vector = lm.embed_texts([text])[0]
        middle = time.perf_counter()
        index.search_vector(vector, 10)
        encode.append(middle - start)
        total.append(time.perf_counter() - start)
    return {
        "model": args.text,
        "encode_p50_ms": round(float(np.median(encode)) * 1000, 1),
        "end_to_end_p50_ms": round(float(np.median(total)) * 1000, 1),
        "end_to_end_p95_ms": round(float(np.percentile(total, 95)) * 1000, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--clusters", type=int, default=4096)
    p.add_argument("--kinds", nargs="+", default=["flat", "ivfpq", "hnsw"])
    p.add_argument("--hnsw_vectors", type=int, default=200_000, help="HNSW is built on the first slides only")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobe", type=int, nargs="*", default=[], help="ivfpq: probe counts to sweep")
    p.add_argument("--rerank", type=int, nargs="*", default=[100], help="ivfpq: re-ranked candidates to sweep")
    p.add_argument("--text", default=None, help="time text queries end to end with this architecture")
    p.add_argument("--tokenizer", default=None, help="tokenizer.spm for --text")
    p.add_argument("--workdir", default=None, help="where the h5 files and indexes go (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="FAISS and torch threads (default: theirs)")
    args = p.parse_args()
    if args.threads:
        import faiss
        import torch

        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="musk-search-bench-"))
    try:
        start = time.perf_counter()
        files, queries = write_cohort(work / "features", args.vectors, args.dim, args.clusters, args.seed)
        setting = {
            "generated_s": round(time.perf_counter() - start, 1),
            "files": len(files),
            "threads": args.threads,
            "load_average": os.getloadavg()[0],
        }
        print(json.dumps(setting), flush=True)
        queries = {name: vectors[: args.queries] for name, vectors in queries.items()}
        for kind in args.kinds:
            subset = files[: -(-args.hnsw_vectors // PATCHES_PER_SLIDE)] if kind == "hnsw" else files
            result = bench_kind(kind, subset, work, queries, args.dim, args)
            print(json.dumps({**result, "load_average": os.getloadavg()[0]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
