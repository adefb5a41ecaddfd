"""Every ``musk mil`` command is one library call: the CLI and the Python call give the same files. Also the
training mechanics MIL shares with the package (precision, model selection), the report encoder obtained through
``musk.load``, and run folders written before this layout still read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mil_cohorts import classification_cohort
from musk.cli import main
from musk.mil import (
    FitOptions,
    MILApplyConfig,
    MILModel,
    MILTrainConfig,
    draw_heatmaps,
    evaluate_to_folder,
    fit_model,
    load_inputs,
    load_mil_models,
    predict_to_folder,
    train_config,
    train_mil,
)
from musk.wsi.h5 import read_patch_file

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = {"folds": 2, "epochs": 3, "hidden": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    manifest, features, _ = classification_cohort(root, n_cases=12, dim=4, patches=(5, 10), two_slides_every=3)
    return root, manifest, features


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_files(folder) -> dict[str, object]:
    """A training folder's files, with the provenance record's configuration (less the folder) and the
    histories' losses (less their timings) in place of those files."""
    files: dict[str, object] = _files(folder)
    files["provenance.json"] = _config_of(folder / "provenance.json")
    for name in [n for n in files if n.endswith("history.json")]:
        files[name] = [{k: v for k, v in e.items() if not k.endswith("_s")} for e in json.loads(files[name])]
    return files


def _config_of(provenance_file) -> dict:
    config = json.loads(provenance_file.read_text())["config"]
    return {k: v for k, v in config.items() if k != "output_dir"}


def _slide_tiff(path):
    import tifffile

    pixels = np.full((512, 1024, 3), 230, np.uint8)
    tifffile.imwrite(path, pixels, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 microns per pixel
    return path


def test_cli_and_python_calls_write_the_same_files(cohort, tmp_path, capsys):
    root, manifest, features = cohort
    (tmp_path / "run.yaml").write_text(f"manifest: {manifest}\nfeatures_dir: {features}\nfolds: 2\nhidden: 8\n")
    assert main(["mil", "train", "--config", str(tmp_path / "run.yaml"), "--epochs", "3", "--device", "cpu",
                 "-o", str(tmp_path / "cli")]) == 0  # fmt: skip
    train_mil(train_config(tmp_path / "run.yaml", epochs=3, device="cpu", output_dir=str(tmp_path / "py")))
    cli, py = _run_files(tmp_path / "cli"), _run_files(tmp_path / "py")
    assert "fold_1/model.safetensors" in cli and "fold_1/history.json" in cli
    assert cli == py

    run = tmp_path / "py"
    for command, call in (("eval", evaluate_to_folder), ("predict", predict_to_folder)):
        argv = ["mil", command, "--model_dir", str(run), "--manifest", str(manifest), "--features_dir", str(features)]
        assert main([*argv, "-o", str(tmp_path / f"{command}_cli"), "--device", "cpu"]) == 0
        call(MILApplyConfig(str(run), str(manifest), str(tmp_path / f"{command}_py"), str(features), device="cpu"))
        cli, py = _files(tmp_path / f"{command}_cli"), _files(tmp_path / f"{command}_py")
        written = {"predictions.csv", "provenance.json", "metrics.json"} - (
            {"metrics.json"} if command == "predict" else set()
        )
        assert set(cli) == set(py) == written
        assert cli["predictions.csv"] == py["predictions.csv"] and cli.get("metrics.json") == py.get("metrics.json")
        assert _config_of(tmp_path / f"{command}_cli" / "provenance.json") == _config_of(
            tmp_path / f"{command}_py" / "provenance.json"
        )

    slide, source = _slide_tiff(tmp_path / "slide.tif"), features / "slide001_0.h5"
    argv = ["mil", "heatmap", "--model_dir", str(run), "--features", str(source), "--slides", str(slide)]
    assert main([*argv, "-o", str(tmp_path / "maps_cli"), "--device", "cpu"]) == 0
    written = draw_heatmaps(run, [source], tmp_path / "maps_py", [slide], device="cpu")
    assert [p.name for p in written] == ["slide001_0_attention.h5", "slide001_0_attention.png"]
    cli, py = (read_patch_file(tmp_path / d / "slide001_0_attention.h5") for d in ("maps_cli", "maps_py"))
    np.testing.assert_array_equal(cli.arrays["attention"], py.arrays["attention"])
    assert cli.attrs == py.attrs
    png = _files(tmp_path / "maps_py")["slide001_0_attention.png"]
    assert _files(tmp_path / "maps_cli")["slide001_0_attention.png"] == png
    with Image.open(tmp_path / "maps_py" / "slide001_0_attention.png") as drawn:
        pixels = np.asarray(drawn.convert("RGB"))
    corner = pixels[-pixels.shape[0] // 4 :, -pixels.shape[1] // 4 :]
    assert (corner == 255).all(-1).any() and not (pixels[:, : pixels.shape[1] // 2] == 255).all(-1).any()  # the scale


def test_heatmaps_close_the_slides_they_open(cohort, tmp_path, monkeypatch):
    from musk.wsi import readers

    root, manifest, features = cohort
    run = tmp_path / "run"
    train_mil(MILTrainConfig(manifest=str(manifest), features_dir=str(features), output_dir=str(run), **QUICK))
    opened, closed = [], []
    original = readers.open_slide

    def tracking(path, mpp=None):
        reader = original(path, mpp)
        close = reader.close
        reader.close = lambda: (closed.append(path), close())
        opened.append(path)
        return reader

    monkeypatch.setattr(readers, "open_slide", tracking)
    slide = _slide_tiff(tmp_path / "slide.tif")
    sources = [features / "slide001_0.h5", features / "slide002_0.h5"]
    draw_heatmaps(run, sources, tmp_path / "maps", [slide, slide], device="cpu")
    assert len(opened) == 2 and closed == opened


def test_evaluation_casts_the_models_to_the_inference_precision(cohort, tmp_path):
    root, manifest, features = cohort
    run = tmp_path / "run"
    train_mil(MILTrainConfig(manifest=str(manifest), features_dir=str(features), output_dir=str(run), **QUICK))
    assert {p.dtype for m in load_mil_models(run, precision="bf16") for p in m.model.parameters()} == {torch.bfloat16}
    settings = {"model_dir": str(run), "manifest": str(manifest), "features_dir": str(features), "device": "cpu"}
    full = evaluate_to_folder(MILApplyConfig(**settings, output_dir=str(tmp_path / "fp32")))
    half = evaluate_to_folder(MILApplyConfig(**settings, output_dir=str(tmp_path / "bf16"), precision="bf16"))
    assert half.predictions.dtype == np.float32
    np.testing.assert_allclose(half.predictions, full.predictions, atol=0.03)
    assert not np.array_equal(half.predictions, full.predictions)  # really computed in bf16
    provenance = json.loads((tmp_path / "bf16" / "provenance.json").read_text())
    assert provenance["config"]["precision"] == "bf16"


def test_fp16_training_scales_the_loss_so_small_gradients_survive(cohort):
    """With the head's weights at 1e-7, the first layer's gradients (about 1e-8) are below fp16's smallest
    number: without a gradient scaler they vanish and one optimiser step leaves the layer where it was."""
    root, manifest, features = cohort
    inputs = load_inputs(manifest, "classification", features, cache_bags=True)
    torch.manual_seed(0)
    model = MILModel(2, 4, hidden=8, dropout=0.0)
    torch.nn.init.normal_(model.head.weight, std=1e-7)  # it starts at zero
    before = model.aggregator.embed[0].weight.detach().clone()
    options = FitOptions(epochs=1, batch_size=12, weight_decay=0.0, precision="fp16", balance="none", patience=0)
    fit_model(model, inputs.dataset, np.arange(12), [], options)
    moved = (model.aggregator.embed[0].weight - before).abs().max().item()
    assert moved > 1e-4  # Adam moves a parameter with a gradient by a good part of lr (1e-3); none: 0


def test_the_kept_model_is_the_epoch_with_the_lowest_validation_loss(cohort):
    root, manifest, features = cohort
    inputs = load_inputs(manifest, "classification", features, cache_bags=True)
    torch.manual_seed(1)
    model = MILModel(2, 4, hidden=8)
    options = FitOptions(epochs=40, patience=3, lr=3e-2, balance="none")
    result = fit_model(model, inputs.dataset, np.arange(8), np.arange(8, 12), options)
    losses = [entry["val_loss"] for entry in result.history]
    best = int(np.argmin(losses))
    assert result.best_epoch == best + 1 and result.best_val_loss == pytest.approx(losses[best])
    assert len(losses) < 40 and len(losses) == best + 1 + 3  # stopped after 3 epochs without improvement
    from musk.mil.fit import _validate

    assert _validate(result.model, inputs.dataset, np.arange(8, 12), options, None)["val_loss"] == pytest.approx(
        losses[best]
    )


def test_reports_are_embedded_by_the_model_musk_load_gives(tmp_path, tokenizer_file):
    import musk
    from musk.mil import embed_reports

    manifest, features, _ = classification_cohort(tmp_path, n_cases=8, dim=4, patches=(5, 10), reports=True)
    config = train_config(
        manifest=str(manifest), features_dir=str(features), output_dir=str(tmp_path / "run"), fusion="text_only",
        text_model="musk_tiny_patch16_64", text_weights="none", tokenizer=str(tokenizer_file), **QUICK,
    )  # fmt: skip
    assert config.text_weights is None
    state = torch.random.get_rng_state()
    inputs = load_inputs(manifest, "classification", features, "text_only", text_encoder=_encoder(config))
    assert torch.equal(torch.random.get_rng_state(), state)  # the random encoder does not move the caller's RNG
    encoder = musk.load("musk_tiny_patch16_64", weights="none", device="cpu", tokenizer=tokenizer_file, seed=0)
    expected = embed_reports([c.report for c in inputs.cohort.cases], encoder.model, encoder.tokenizer)
    np.testing.assert_array_equal(inputs.dataset.text.numpy(), expected)
    with pytest.raises(ValueError, match="random initialisation is spelled --text_weights none"):
        MILTrainConfig(text_weights="random")
    assert MILTrainConfig().text_weights == "published"


def _encoder(config: MILTrainConfig):
    from musk.mil import TextEncoderSpec

    return TextEncoderSpec(config.text_model, config.text_weights, config.tokenizer, None, 100, "cpu")


def test_settings_from_yaml_and_arguments_name_the_file(tmp_path):
    (tmp_path / "run.yaml").write_text("folds: 3\nclasses: [a, b]\nlr: 1\n")
    config = train_config(tmp_path / "run.yaml", folds=4)
    assert (config.folds, config.classes, config.lr) == (4, ["a", "b"], 1.0)
    (tmp_path / "bad.yaml").write_text("epochs: many\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: epochs must be an integer, got 'many'"):
        train_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("epoch: 3\n")
    with pytest.raises(
        ValueError, match=r"typo\.yaml: unknown setting\(s\) epoch; 'epoch' \(did you mean 'epochs'\?\)"
    ):
        train_config(tmp_path / "typo.yaml")
    from musk.settings import pick

    options = pick(FitOptions, config, seed=9)
    assert (options.epochs, options.lr, options.precision, options.seed) == (config.epochs, 1.0, "fp32", 9)


def test_a_run_folder_written_before_this_layout_is_still_read(cohort, tmp_path, capsys):
    """A fold folder exactly as the first release wrote it (its config.json keys, random report encoder
    recorded as null, no record of the run's files) is evaluated, predicted and drawn from."""
    root, manifest, features = cohort
    torch.manual_seed(3)
    model = MILModel(2, 4, None, "abmil", "none", 8, 0.25)
    fold = tmp_path / "old" / "fold_0"
    fold.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, fold / "model.safetensors")
    (fold / "config.json").write_text(json.dumps({
        "format": "musk-mil", "task": "classification", "classes": ["normal", "tumor"], "out_dim": 2,
        "feature_dim": 4, "text_dim": None, "model": "abmil", "fusion": "none", "hidden": 8, "dropout": 0.25,
        "survival_loss": None, "bin_edges": None, "text_encoder": None, "fold": 0, "n_folds": 1,
        "run_key": "0123456789abcdef",
    }))  # fmt: skip
    cohort_args = ["--manifest", str(manifest), "--features_dir", str(features), "--device", "cpu"]
    assert main(["mil", "eval", "--model_dir", str(tmp_path / "old"), *cohort_args, "-o", str(tmp_path / "e")]) == 0
    table = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert len(table) == 12 and np.allclose(table.prob_normal + table.prob_tumor, 1)
    assert main(["mil", "predict", "--model_dir", str(fold), *cohort_args, "-o", str(tmp_path / "p")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p" / "predictions.csv").prob_tumor, table.prob_tumor)
    written = draw_heatmaps(tmp_path / "old", [features / "slide000_0.h5"], tmp_path / "maps", device="cpu")
    assert read_patch_file(written[0]).arrays["attention"].sum() == pytest.approx(1.0, abs=1e-5)
