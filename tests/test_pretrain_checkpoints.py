"""What a pretraining run folder may hold, and what the command line checks before any work: a file that would
run code when loaded is refused (by the export, by a stage started from `weights=<run dir>`, by a resume), also
where torch's default would unpickle it; a sharded checkpoint's index likewise; a recipe's YAML error and a
missing `--tokenizer` are one-line errors before a model loads; `--tokenizer` trains."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml
from safetensors.torch import load_file

import musk
from musk.cli import main
from musk.pretrain import export_weights, load_config, train_contrastive
from pretrain_synthetic import CodeOnLoad, make_pairs
from test_loading import hub_error

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("accelerate")

TINY = "musk_tiny_patch16_64"


@pytest.fixture(autouse=True)
def unpickling_by_default(monkeypatch):
    """torch before 2.6 (pyproject allows 2.1) unpickled anything unless a caller asked for weights only."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def _refuse(*args, **kwargs):
    raise AssertionError("a model was built")


def _gated(*args, **kwargs):
    import huggingface_hub

    raise hub_error(huggingface_hub.utils.GatedRepoError)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("musk pretrain: error: ")
    return line


def _tiny_state(prefix: str = "musk.") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in musk.create_model(TINY).state_dict().items()}


def _crafted_run(root, marker) -> tuple:
    """A run folder whose only checkpoint holds the MUSK weights of a model and, besides, code."""
    run = root / "run"
    checkpoint = run / "checkpoints" / "step_00000001"
    checkpoint.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": TINY}))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 1, "positions": {}}))
    torch.save({**_tiny_state(), "extra": CodeOnLoad(marker)}, checkpoint / "pytorch_model.bin")
    return run, checkpoint


def test_export_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    run, _ = _crafted_run(tmp_path, marker)
    out = tmp_path / "weights.safetensors"
    assert main(["pretrain", "export", str(run), "-o", str(out)]) == 2
    line = _error_line(capsys)
    assert "pytorch_model.bin is not a plain tensor file" in line and "could run code" in line
    assert not marker.exists() and not out.exists()


def test_a_stage_started_from_a_run_that_would_run_code_is_refused(tmp_path, tokenizer_file):
    marker = tmp_path / "ran"
    run, _ = _crafted_run(tmp_path, marker)
    config = load_config("contrastive", "tiny", {
        "pairs": [str(make_pairs(tmp_path / "pairs", 8, seed=1))], "weights": str(run), "steps": 1, "batch_size": 8,
        "tokenizer": str(tokenizer_file), "output_dir": str(tmp_path / "out"), "cpu": True, "tensorboard": False,
    })  # fmt: skip
    with pytest.raises(ValueError, match="pytorch_model.bin is not a plain tensor file"):
        train_contrastive(config)
    assert not marker.exists()


def test_a_sharded_checkpoint_index_is_read_without_running_code(tmp_path):
    """torch.distributed.checkpoint unpickles its ``.metadata`` without restriction: the export reads it first
    allowing only an index's classes. A real index passes (the merged weights are the saved ones)."""
    state = _tiny_state()
    real = tmp_path / "real" / "pytorch_model_fsdp_0"
    dcp.save({"model": state}, checkpoint_id=str(real))
    exported = load_file(str(export_weights(real.parent, tmp_path / "real.safetensors", model=TINY)))
    assert all(torch.equal(exported[k.removeprefix("musk.")], v) for k, v in state.items())

    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted" / "pytorch_model_fsdp_0"
    shutil.copytree(real, crafted)
    (crafted / ".metadata").write_bytes(pickle.dumps(CodeOnLoad(marker)))
    with pytest.raises(ValueError, match=r"\.metadata is not a plain checkpoint index \(it refers to io.open\)"):
        export_weights(crafted.parent, tmp_path / "crafted.safetensors", model=TINY)
    assert not marker.exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer_file):
    """`musk pretrain contrastive --tokenizer ...`: 2 steps, a checkpoint after each."""
    root = tmp_path_factory.mktemp("cli-run")
    out = root / "run"
    pairs = make_pairs(root / "pairs", 16, seed=3)
    argv = ["pretrain", "contrastive", "--recipe", "tiny", "-o", str(out), "--pairs", str(pairs), "--batch_size", "8",
            "--tokenizer", str(tokenizer_file), "--steps", "2", "--device", "cpu", "--set", "save_every=1",
            "--set", "tensorboard=false"]  # fmt: skip
    assert main(argv) == 0
    return out, argv


def test_the_tokenizer_option_is_the_stage_tokenizer(run, tokenizer_file):
    out, _ = run
    assert yaml.safe_load((out / "config.yaml").read_text())["tokenizer"] == str(tokenizer_file)
    record = json.loads((out / "provenance.json").read_text())
    assert record["weights"]["random"] is True and len(record["weights"]["sha256"]) == 64


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl"])
def test_resuming_from_a_checkpoint_that_would_run_code_is_refused(run, tmp_path, name, capsys):
    """Refused before accelerate reads the checkpoint (it would ignore unreadable random states and go on)."""
    out, argv = run
    copy, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(out, copy)
    torch.save({"state": CodeOnLoad(marker)}, copy / "checkpoints" / "step_00000002" / name)
    capsys.readouterr()
    assert main([*argv, "-o", str(copy), "--steps", "3"]) == 2
    assert f"{name} is not a plain tensor file" in _error_line(capsys)
    assert not marker.exists() and not (copy / "checkpoints" / "step_00000003").exists()


def test_a_missing_tokenizer_is_named_before_a_model_loads(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("musk.pretrain.start.create_model", _refuse)
    pairs = make_pairs(tmp_path / "pairs", 8, seed=1)
    argv = ["pretrain", "contrastive", "--recipe", "tiny", "-o", str(tmp_path / "out"), "--pairs", str(pairs),
            "--device", "cpu"]  # fmt: skip
    assert main([*argv, "--tokenizer", str(tmp_path / "no.spm")]) == 2
    line = _error_line(capsys)
    assert "no.spm does not exist" in line and "--tokenizer" in line

    monkeypatch.setattr("musk.models.weights._hub_reachable", True)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _gated)
    assert main(argv) == 2  # no tokenizer given, and the hub's is out of reach
    line = _error_line(capsys)
    assert "--tokenizer PATH" in line and "--set tokenizer=PATH" in line


def test_a_recipe_that_is_not_yaml_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("mim:\n  lr: 1.0e-4\n  fields: [1.0, 0.5\n  steps: 10\n")
    assert main(["pretrain", "mim", "--recipe", str(recipe), "-o", str(tmp_path / "out")]) == 2
    line = _error_line(capsys)
    assert str(recipe) in line and "line 4" in line
