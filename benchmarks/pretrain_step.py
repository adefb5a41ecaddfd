"""Pretraining step cost: samples/s and peak memory per stage, and the memory a large run needs per GPU.

    python benchmarks/pretrain_step.py                 # tiny: every stage, a few steps each (CPU)
    python benchmarks/pretrain_step.py --large         # plus ONE fp32 stage-1 step of the large model on CPU
    python benchmarks/pretrain_step.py --estimate_only # only the per-GPU memory table of the large recipe

Each measurement runs in a fresh child process, so its peak resident memory is its own. The per-GPU table is
computed (weights, gradients, AdamW state, activations) for the large recipe's stage 1, with and without
activation checkpointing and ZeRO-2, so a user can size a run before renting the GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GIB = 1 << 30


def _batch(n: int, img_size: int, codebook: int, teacher_dim: int, text_len: int) -> dict:
    import torch

    grid = img_size // 16
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 60000, (n, text_len), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, 1 : 1 + round(0.15 * text_len)] = ids[:, 1 : 1 + round(0.15 * text_len)]
    mask = torch.zeros(n, grid * grid, dtype=torch.bool)
    mask[:, : round(0.4 * grid * grid)] = True
    return {"images": torch.randn(n, 3, img_size, img_size, generator=g), "image_mask": mask,
            "codes": torch.randint(0, codebook, (n, grid * grid), generator=g), "text_ids": ids,
            "text_padding_mask": torch.zeros_like(ids), "text_labels": labels, "masked_ids": ids,
            "teacher": torch.randn(n, grid * grid, teacher_dim, generator=g)}  # fmt: skip


def _build(stage: str, name: str, grad_checkpointing: bool):
    """The stage's trainable model and a batch maker for it (the recipe's sizes)."""
    import musk
    from musk.pretrain.models import ContrastiveModel, MaskedModellingModel
    from musk.pretrain.vqkd import VQKD, VQKDConfig

    tiny = name.endswith("64")
    text_len = 32 if tiny else 100
    if stage == "tokenizer":
        cfg = VQKDConfig(img_size=64, encoder_dim=64, encoder_depth=2, encoder_heads=4, decoder_depth=1,
                         codebook_size=64, code_dim=16, teacher_dim=64) if tiny else VQKDConfig()  # fmt: skip
        model = VQKD(cfg).train()
        return model, lambda n: _batch(n, cfg.img_size, cfg.codebook_size, cfg.teacher_dim, text_len)
    backbone = musk.create_model(name).train()
    backbone.set_grad_checkpointing(grad_checkpointing)
    size, codebook = backbone.config.img_size, 64 if tiny else 8192
    if stage == "mim":
        model = MaskedModellingModel(backbone, codebook)
    else:
        model = ContrastiveModel(backbone, decoder_depth=1 if tiny else 4)
    return model, lambda n: _batch(n, size, codebook, 64, text_len)


def measure(stage: str, name: str, batch: int, steps: int, grad_checkpointing: bool) -> dict:
    """Run ``steps`` optimizer steps (after one warm-up step) in this process; returns the figures."""
    import torch

    model, make = _build(stage, name, grad_checkpointing)
    data = make(batch)
    params = [p for p in model.parameters() if p.requires_grad]
    # one parameter at a time: the multi-tensor AdamW would hold a temporary copy of every moment at once
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=name.endswith("64"))

    def step():
        out = model(data["images"], data["teacher"]) if stage == "tokenizer" else model(data)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocates the optimizer state
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - tic) / max(steps, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"stage": stage, "model": name, "batch": batch, "steps": steps, "seconds_per_step": seconds,
            "samples_per_s": batch / seconds, "peak_rss_gib": peak / GIB,
            "trainable_parameters": sum(p.numel() for p in params)}  # fmt: skip


def _child(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024 / GIB


def estimate_per_gpu(params: int, images: int, texts: int, gpus: int, checkpointing: bool, zero2: bool) -> dict:
    """Bytes per GPU for a stage-1 step of the large model with bf16 autocast and AdamW.

    Weights fp32 (4 B/param) + gradients fp32 (4) + AdamW moments (8); ZeRO-2 shards the last two over the
    GPUs. Activations per multiway block and token, in bf16, with fused attention (no score matrix stored):
    ~21 values of width d (q, k, v, attention output, norms, residuals) + 4d hidden values x 4 (fc1 output,
    GELU, hidden LayerNorm, fc2 input) = 37 d values = 74 d bytes; with checkpointing only the block input
    (2 d bytes) per block, plus one block recomputed in full.
    """
    d, depth, img_tokens, txt_tokens = 1024, 24, 577, 100
    tokens = images * img_tokens + texts * txt_tokens
    per_block = 74 * d * tokens
    activations = (2 * d * tokens * depth + per_block) if checkpointing else per_block * depth
    heads = 2 * (images * 230 * 8192 + texts * 15 * 64010) * 2  # masked-token logits, bf16, and their grads
    weights, grads, adam = 4 * params, 4 * params, 8 * params
    if zero2:
        grads, adam = grads / gpus, adam / gpus
    total = weights + grads + adam + activations + heads
    return {"gpus": gpus, "images_per_gpu": images, "texts_per_gpu": texts, "checkpointing": checkpointing,
            "zero2": zero2, "weights_gib": weights / GIB, "grads_gib": grads / GIB, "adam_gib": adam / GIB,
            "activations_gib": (activations + heads) / GIB, "total_gib": total / GIB}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="also one fp32 stage-1 step of the large model")
    parser.add_argument("--estimate_only", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--child", nargs=5, metavar=("STAGE", "MODEL", "BATCH", "STEPS", "CKPT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        stage, name, batch, steps, ckpt = args.child
        print(json.dumps(measure(stage, name, int(batch), int(steps), ckpt == "1")))
        return

    results = []
    if not args.estimate_only:
        for stage in ("tokenizer", "mim", "contrastive"):
            results.append(_child([stage, "musk_tiny_patch16_64", "16", str(args.steps), "0"]))
            r = results[-1]
            print(f"tiny  {stage:<12} batch {r['batch']:>3}: {r['samples_per_s']:8.1f} samples/s, "
                  f"{r['seconds_per_step'] * 1000:7.1f} ms/step, peak RSS {r['peak_rss_gib']:.2f} GiB")  # fmt: skip
    if args.large:
        need = 13.5
        available = _available_gib()
        if available < need:
            print(f"large: skipped, {available:.1f} GiB available and one fp32 step needs about {need:.0f} GiB")
        else:
            r = _child(["mim", "musk_large_patch16_384", "1", "1", "1"])
            results.append(r)
            print(f"large mim          batch   1 (+1 text), fp32, activation checkpointing: "
                  f"{r['seconds_per_step']:.1f} s/step, peak RSS {r['peak_rss_gib']:.2f} GiB, "
                  f"{r['trainable_parameters'] / 1e6:.0f} M trainable parameters")  # fmt: skip
            predicted = estimate_per_gpu(r["trainable_parameters"], 1, 1, 1, True, False)
            # fp32 on CPU: activations in 4 B instead of 2 B
            cpu_total = predicted["total_gib"] + predicted["activations_gib"]
            print(f"      estimate for this step {cpu_total:.2f} GiB: measured / estimate = "
                  f"{r['peak_rss_gib'] / cpu_total:.2f} (the process itself adds ~0.5 GiB)")  # fmt: skip

    import torch

    import musk
    from musk.pretrain.models import MaskedModellingModel

    with torch.device("meta"):
        model = MaskedModellingModel(musk.create_model("musk_large_patch16_384"), 8192)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"\nlarge recipe, stage 1, bf16 autocast + AdamW, {params / 1e6:.0f} M trainable parameters, "
        "2048 images + 2048 texts per step:"
    )
    print(f"{'GPUs':>5} {'img+txt/GPU':>12} {'ckpt':>5} {'ZeRO-2':>6} {'weights':>8} {'grads':>6} {'adam':>6} "
          f"{'activ.':>7} {'total GiB':>9}")  # fmt: skip
    for gpus in (8, 32, 64):
        per = 2048 // gpus
        for ckpt in (False, True):
            for zero2 in (False, True):
                e = estimate_per_gpu(params, per, per, gpus, ckpt, zero2)
                results.append(e)
                print(f"{gpus:>5} {per:>5}+{per:<6} {'yes' if ckpt else 'no':>5} {'yes' if zero2 else 'no':>6} "
                      f"{e['weights_gib']:8.1f} {e['grads_gib']:6.1f} {e['adam_gib']:6.1f} "
                      f"{e['activations_gib']:7.1f} {e['total_gib']:9.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
