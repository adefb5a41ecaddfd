"""Training through the public function: the tiny model learns the generated set from the images, a model
that sees only noise instead of the images does not; what a run writes; the multi-process accelerate path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("accelerate", reason="training needs the [vqa] extra")

from musk.vqa import VQATrainConfig, evaluate_vqa, load_split, load_vqa_model, train_vqa
from musk.vqa import train as vqa_train
from pretrain_synthetic import CodeOnLoad
from test_vqa_synthetic import make_vqa_set

SPLITS = {"train": 250, "validation": 50}


def tiny_config(data: Path, output_dir: Path, tokenizer_file: Path, **overrides) -> VQATrainConfig:
    """Settings under which the 2-layer, 64-wide model learns the generated set from scratch on a CPU (16 epochs
    were enough on one CPU; on another, whose kernels round differently, the shapes stalled at 0.8 of the
    validation answers; with 24 they reach 1.0 by epoch 13)."""
    values = dict(
        data=str(data),
        output_dir=str(output_dir),
        model="musk_tiny_patch16_64",
        weights=None,
        tokenizer=str(tokenizer_file),
        epochs=24,
        batch_size=32,
        lr=2e-3,
        layer_decay=1.0,
        weight_decay=0.01,
        warmup_ratio=0.05,
        max_question_length=32,
        patience=0,
        cpu=True,
        seed=0,
    )
    return VQATrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_file):
    """One run on the images, one on the same questions with noise for images (the question-only baseline)."""
    results = {}
    for kind, noise in (("image", False), ("noise", True)):
        root = tmp_path_factory.mktemp(kind)
        data = make_vqa_set(root / "data", SPLITS, seed=0, noise_images=noise)
        results[kind] = (data, train_vqa(tiny_config(data, root / "out", tokenizer_file)))
    return results


def test_learns_from_the_image_not_from_the_question_alone(runs):
    _, image = runs["image"]
    _, noise = runs["noise"]
    assert image.best_accuracy >= 0.9, image.history
    # each question's majority answer gets about half; noise images leave nothing else to learn
    assert noise.best_accuracy <= 0.65, noise.history
    best = image.history[image.best_epoch - 1]["validation"]
    assert best["closed"] >= 0.9 and best["open"] >= 0.9
    assert set(best["per_type"]) == {"colour", "shape"}


def test_saved_best_model_reproduces_the_validation_accuracy(runs):
    data, result = runs["image"]
    assert result.best_dir == Path(result.output_dir) / "best"
    files = {p.name for p in result.best_dir.iterdir()}
    assert files == {"model.safetensors", "answers.json", "tokenizer.spm", "config.json", "provenance.json"}
    assert (Path(result.output_dir) / "last" / "model.safetensors").is_file()
    assert not [p for p in Path(result.output_dir).iterdir() if p.name.startswith(".")]  # no temporary leftovers
    provenance = json.loads((result.best_dir / "provenance.json").read_text())
    assert provenance["config"]["lr"] == 2e-3 and provenance["epoch"] == result.best_epoch
    assert "torch" in provenance["versions"]
    history = json.loads((Path(result.output_dir) / "history.json").read_text())
    assert history["best_epoch"] == result.best_epoch
    assert len(history["history"]) == provenance["config"]["epochs"] == 24

    saved = load_vqa_model(result.output_dir)  # a training folder resolves to its best model
    assert saved.vocab.answers == load_vqa_model(result.best_dir).vocab.answers
    report = evaluate_vqa(saved, load_split(data, "validation"), batch_size=84)
    assert report.metrics["overall"] == pytest.approx(result.best_accuracy)


def test_early_stopping_and_answer_filtering(tmp_path, tokenizer_file, caplog):
    data = make_vqa_set(tmp_path / "data", {"train": 12, "validation": 4}, seed=3)
    config = tiny_config(data, tmp_path / "out", tokenizer_file, epochs=6, lr=0.0, patience=1, min_answer_count=1000)
    with pytest.raises(ValueError, match="vocabulary is empty"):
        train_vqa(config)
    # lr 0 never improves on the first epoch: patience 1 stops after the second
    result = train_vqa(tiny_config(data, tmp_path / "out", tokenizer_file, epochs=6, lr=0.0, patience=1))
    assert [h["epoch"] for h in result.history] == [1, 2] and result.best_epoch == 1


class Killed(Exception):
    """Stands for the job being killed."""


def killed_in_epoch_2(config: VQATrainConfig, monkeypatch) -> tuple[list, list]:
    """Run ``config`` and kill it in epoch 2, after the epoch-1 checkpoint; returns the list each validation
    appends to and the validations (counted from 1) that kill the run, both for the caller to change."""
    validated, kill_at = [], [2]
    real_validate = vqa_train._validate

    def validate(*args):
        validated.append(1)
        if len(validated) in kill_at:
            raise Killed
        return real_validate(*args)

    monkeypatch.setattr(vqa_train, "_validate", validate)
    with pytest.raises(Killed):
        train_vqa(config)
    return validated, kill_at


def test_restart_resumes_the_same_run_and_refuses_another(tmp_path, tokenizer_file, monkeypatch):
    """A run killed in epoch 2 continues after epoch 1 as if never stopped; a finished run is left as it is; a
    run with other settings never replaces it unless asked to."""
    data = make_vqa_set(tmp_path / "data", {"train": 6, "validation": 2}, seed=3)  # 24 and 8 questions
    full = train_vqa(tiny_config(data, tmp_path / "full", tokenizer_file, epochs=3, batch_size=8))
    out = tmp_path / "out"
    config = tiny_config(data, out, tokenizer_file, epochs=3, batch_size=8)
    validated, kill_at = killed_in_epoch_2(config, monkeypatch)
    first = json.loads((out / "history.json").read_text())["history"]
    assert [h["epoch"] for h in first] == [1]

    validated.clear()
    kill_at.clear()
    resumed = train_vqa(config)
    assert len(validated) == 2  # epochs 2 and 3 only
    assert resumed.history[0] == first[0]
    for got, want in zip(resumed.history, full.history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["validation"]["overall"] == want["validation"]["overall"]
    assert resumed.best_epoch == full.best_epoch
    ours, reference = load_file(out / "last" / "model.safetensors"), load_file(tmp_path / "full/last/model.safetensors")
    assert all(torch.allclose(ours[k], reference[k], atol=1e-6) for k in reference)
    assert not (out / "checkpoints").exists()
    history = json.loads((out / "history.json").read_text())
    assert history["finished"] and len(history["history"]) == 3

    validated.clear()
    best_written = (out / "best" / "model.safetensors").stat().st_mtime_ns
    again = train_vqa(config)  # finished: nothing to do
    assert not validated and again.best_epoch == resumed.best_epoch and again.history == resumed.history
    with pytest.raises(ValueError, match="already holds a VQA training run.*--overwrite"):
        train_vqa(tiny_config(data, out, tokenizer_file, epochs=2, batch_size=8))
    assert (out / "best" / "model.safetensors").stat().st_mtime_ns == best_written
    assert json.loads((out / "history.json").read_text()) == history
    replaced = train_vqa(tiny_config(data, out, tokenizer_file, epochs=2, batch_size=8, overwrite=True))
    assert len(replaced.history) == 2 and len(json.loads((out / "history.json").read_text())["history"]) == 2


def test_a_run_folder_runs_no_code_when_resumed(tmp_path, tokenizer_file, monkeypatch):
    """Earlier versions pickled the learning-rate scheduler into each checkpoint (``custom_checkpoint_0.pkl``),
    which accelerate unpickles without restriction: a crafted run folder ran code. The file is never read now
    (the learning rate follows the step; such a folder resumes to the uninterrupted run), and a checkpoint with
    any other file that would run code is refused before anything is loaded."""
    data = make_vqa_set(tmp_path / "data", {"train": 6, "validation": 2}, seed=3)
    full = train_vqa(tiny_config(data, tmp_path / "full", tokenizer_file, epochs=2, batch_size=8))
    marker = tmp_path / "ran"
    for name in ("custom_checkpoint_0.pkl", "optimizer.bin"):
        config = tiny_config(data, tmp_path / name, tokenizer_file, epochs=2, batch_size=8)
        _, kill_at = killed_in_epoch_2(config, monkeypatch)
        kill_at.clear()
        (checkpoint,) = (tmp_path / name / "checkpoints").iterdir()
        torch.save({"state": CodeOnLoad(marker)}, checkpoint / name)
        if name == "optimizer.bin":
            with pytest.raises(ValueError, match=f"{checkpoint / name} is not a plain tensor file"):
                train_vqa(config)
            assert not (tmp_path / name / "last").exists()
            continue
        resumed = train_vqa(config)
        assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history])
        assert resumed.history[-1]["validation"] == full.history[-1]["validation"]
    assert not marker.exists()


def test_local_weights_bring_their_tokenizer_and_fingerprint(tmp_path, tokenizer_file):
    """The MUSK comes through musk.load: the weights file's tokenizer.spm is the question tokenizer (saved with
    the model), and the provenance records the file's SHA-256; the model starts from those weights."""
    import shutil

    import musk
    from musk.files import file_sha256
    from weights_file import save_weights

    start, folder = musk.create_model("musk_tiny_patch16_64"), tmp_path / "mine"
    folder.mkdir()
    weights = save_weights(start, folder / "tiny.safetensors")
    shutil.copyfile(tokenizer_file, folder / "tokenizer.spm")
    data = make_vqa_set(tmp_path / "data", {"train": 4, "validation": 2}, seed=4)
    config = tiny_config(data, tmp_path / "out", tokenizer_file, weights=str(weights), tokenizer=None, epochs=1, lr=0.0)
    result = train_vqa(config)
    record = json.loads((result.best_dir / "provenance.json").read_text())["weights"]
    assert record == {"path": str(weights), "sha256": file_sha256(weights)}
    assert (result.best_dir / "tokenizer.spm").read_bytes() == tokenizer_file.read_bytes()
    trained = load_vqa_model(result.best_dir).model.backbone.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in start.state_dict().items())  # lr 0: the weights as loaded


def test_two_processes_under_accelerate_launch(tmp_path, tokenizer_file):
    """A real two-process run of `musk vqa train` under `accelerate launch` on CPU (gloo): both processes train
    on their share of the batches, the main one writes the model. (accelerate 1.x's `--cpu --num_processes 2`
    starts one process without an MPI host file; `--multi_gpu` with `--device cpu` starts two through torchrun.)"""
    pytest.importorskip("accelerate")
    data = make_vqa_set(tmp_path / "data", {"train": 16, "validation": 4}, seed=5)
    out = tmp_path / "out"
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "musk", "vqa", "train", "--data", str(data), "--output_dir", str(out),
        "--model", "musk_tiny_patch16_64", "--weights", "none", "--tokenizer", str(tokenizer_file),
        "--epochs", "2", "--batch_size", "8", "--max_question_length", "32", "--lr", "1e-3", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    provenance = json.loads((out / "best" / "provenance.json").read_text())
    assert provenance["processes"] == 2
    history = json.loads((out / "history.json").read_text())["history"]
    assert len(history) == 2 and history[-1]["validation"]["n"] == 16  # every validation question scored once
    assert load_vqa_model(out).vocab.answers
