"""The ``musk`` command, in-process through ``musk.cli.main`` and once or twice as a real process."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import musk
from conftest import shared_path
from musk.cli import main
from musk.models import WeightsUnavailableError
from musk.tokenizer import MuskTokenizer
from test_loading import fake_hub_cache, hub_error
from weights_file import save_weights

TINY = "musk_tiny_patch16_64"
CLASSES = ["lung adenocarcinoma", "benign lung tissue", "lung squamous cell carcinoma"]
ACCESS_HELP = "request access at https://huggingface.co/xiangjx/musk"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(weights file, the model it was saved from)."""
    torch.manual_seed(7)
    model = timm.create_model(TINY).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(model, str(path))
    return path, model


@pytest.fixture(scope="module")
def weights(source):
    return source[0]


@pytest.fixture(scope="module")
def model(source):
    return source[1]


def _pixels(rng, height, width, channels):
    """Smooth colour gradients plus noise: tissue-like enough that resizing keeps differences."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * (c + 1) + y * (3 - c)) % 256 for c in range(channels)], axis=-1)
    return np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with a nested subfolder (RGB png + jpeg, grey, RGBA, a corrupt jpeg, a text file, a hidden
    image) and one more image outside it. Returns a dict of paths."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("images")
    folder = root / "patches"
    (folder / "sub" / "deeper").mkdir(parents=True)
    paths = {
        "rgb_png": folder / "a_rgb.png",
        "rgb_jpeg": folder / "b_rgb.jpg",
        "corrupt": folder / "sub" / "c_broken.jpg",
        "grey": folder / "sub" / "d_grey.png",
        "rgba": folder / "sub" / "deeper" / "e_rgba.png",
        "extra": root / "extra" / "f_single.jpeg",
    }
    Image.fromarray(_pixels(rng, 96, 80, 3)).save(paths["rgb_png"])
    Image.fromarray(_pixels(rng, 100, 120, 3)).save(paths["rgb_jpeg"], quality=90)
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(200))
    Image.fromarray(_pixels(rng, 70, 70, 1)[..., 0], mode="L").save(paths["grey"])
    rgba = _pixels(rng, 64, 90, 4)
    rgba[..., 3] = np.linspace(0, 255, 90, dtype=np.uint8)[None, :]  # transparent on the left
    Image.fromarray(rgba, mode="RGBA").save(paths["rgba"])
    paths["extra"].parent.mkdir()
    Image.fromarray(_pixels(rng, 128, 128, 3)).save(paths["extra"], quality=95)
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(_pixels(rng, 64, 64, 3)).save(folder / ".hidden.png")
    paths["folder"] = folder
    return paths


GOOD = ["rgb_png", "rgb_jpeg", "grey", "rgba", "extra"]  # the order `musk embed <folder> <extra>` lists them


def model_args(weights) -> list[str]:
    return ["--model", TINY, "--weights", str(weights), "--device", "cpu"]


def run(*args) -> int:
    return main([str(a) for a in args])


def reference(model, files, **flags) -> np.ndarray:
    """What the CLI should give: each file on its own through the model's own preprocessing."""
    transform = musk.get_transform(model)
    with torch.inference_mode():
        rows = [model.encode_image(transform(musk.load_image(f)).unsqueeze(0), **flags)[0] for f in files]
    return torch.stack(rows).numpy()


def load_npz(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


# ---- musk embed -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, images, weights):
    """``musk embed <folder> <extra>`` with default flags, batches of 2, one worker-less run (shared by tests)."""
    out = tmp_path_factory.mktemp("embed") / "nested" / "emb.npz"
    status = run("embed", images["folder"], images["extra"], "-o", out, "--batch_size", 2, *model_args(weights))
    return status, out


def test_embed_rows_follow_files_and_equal_the_direct_call(embedded, images, model):
    status, out = embedded
    data = load_npz(out)
    assert data["files"].tolist() == [str(images[k]) for k in GOOD]  # hidden file and notes.txt skipped
    assert data["embeddings"].dtype == np.float32
    assert data["embeddings"].shape == (len(GOOD), 64)
    expected = reference(model, [images[k] for k in GOOD], with_head=False, normalize=False)
    np.testing.assert_allclose(data["embeddings"], expected, rtol=1e-4, atol=1e-5)
    # the images really differ, so rows in the wrong order would not pass
    assert min(np.abs(expected[i] - expected[j]).max() for i in range(5) for j in range(i)) > 1e-3


def test_embed_reports_the_corrupt_file_and_keeps_the_rest(embedded, images):
    status, out = embedded
    assert status == 1
    data = load_npz(out)
    assert data["failed_files"].tolist() == [str(images["corrupt"])]
    assert len(data["failed_errors"]) == 1 and "c_broken.jpg" in data["failed_errors"][0]
    assert str(images["corrupt"]) not in data["files"].tolist()


def test_embed_provenance_beside_the_npz(embedded, images, weights):
    status, out = embedded
    record = json.loads(out.with_suffix(".json").read_text())
    config = record["config"]
    assert config["model"] == TINY and config["weights"] == str(weights)
    assert config["images"] == [str(images["folder"]), str(images["extra"])]
    assert config["batch_size"] == 2 and config["with_head"] is False and config["ms_aug"] is False
    assert config["output"] == str(out)
    assert record["versions"]["musk-pathology"] == musk.__version__
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["timm"] == timm.__version__
    assert record["weights"] == {"path": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert record["outputs"]["shape"] == [len(GOOD), 64]
    assert list(record["outputs"]["failed"]) == [str(images["corrupt"])]
    assert sorted(p.name for p in out.parent.iterdir()) == ["emb.json", "emb.npz"]  # no temporary files left


def test_embed_logs_the_failure_on_stderr(tmp_path, images, weights, capsys):
    status = run("embed", images["corrupt"], images["grey"], "-o", tmp_path / "e.npz", *model_args(weights))
    assert status == 1
    err = capsys.readouterr().err
    assert re.search(r"ERROR .*failed: .*c_broken\.jpg", err)


def test_embed_with_head_and_normalize(tmp_path, images, weights, model):
    files = [images[k] for k in GOOD]
    out = tmp_path / "proj.npz"
    assert run("embed", *files, "-o", out, "--with_head", "--normalize", *model_args(weights)) == 0
    data = load_npz(out)
    assert data["failed_files"].tolist() == []
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1.0, atol=1e-5)
    expected = reference(model, files, with_head=True, normalize=True)
    np.testing.assert_allclose(data["embeddings"], expected, rtol=1e-4, atol=1e-5)
    plain = reference(model, files, with_head=False, normalize=True)
    assert np.abs(data["embeddings"] - plain).max() > 1e-2  # the head was really applied


def test_embed_ms_aug_is_twice_as_wide(tmp_path, images, weights, model):
    files = [images["rgb_png"], images["rgba"]]
    out = tmp_path / "ms.npz"
    assert run("embed", *files, "-o", out, "--ms_aug", *model_args(weights)) == 0
    data = load_npz(out)
    assert data["embeddings"].shape == (2, 128)
    expected = reference(model, files, with_head=False, normalize=False, ms_aug=True)
    np.testing.assert_allclose(data["embeddings"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data["embeddings"][:, :64], reference(model, files, with_head=False, normalize=False))


def test_embed_with_workers_gives_the_same_file(tmp_path, embedded, images, weights):
    out = tmp_path / "workers.npz"
    args = ["embed", images["folder"], images["extra"], "-o", out, "--batch_size", 2, "--num_workers", 2]
    assert run(*args, *model_args(weights)) == 1
    with_workers, without = load_npz(out), load_npz(embedded[1])
    assert with_workers.keys() == without.keys()
    for key in without:
        np.testing.assert_array_equal(with_workers[key], without[key])


@pytest.mark.parametrize("streams", [1, 3])
def test_embed_streams_give_the_same_rows(tmp_path, embedded, images, weights, streams):
    out = tmp_path / "streams.npz"
    args = ["embed", images["folder"], images["extra"], "-o", out, "--batch_size", 4, "--streams", streams]
    assert run(*args, *model_args(weights)) == 1
    with_streams, default = load_npz(out), load_npz(embedded[1])
    assert with_streams["files"].tolist() == default["files"].tolist()
    np.testing.assert_allclose(with_streams["embeddings"], default["embeddings"], rtol=1e-5, atol=1e-6)


def test_embed_refuses_zero_streams(tmp_path, images, weights, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("embed", images["extra"], "-o", tmp_path / "x.npz", "--streams", 0, *model_args(weights))
    assert exit_info.value.code == 2
    assert "--streams: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_embed_with_every_file_corrupt_writes_an_empty_table(tmp_path, images, weights):
    out = tmp_path / "none.npz"
    assert run("embed", images["corrupt"], "-o", out, *model_args(weights)) == 1
    data = load_npz(out)
    assert data["embeddings"].shape == (0, 64) and data["embeddings"].dtype == np.float32
    assert data["files"].tolist() == [] and data["failed_files"].tolist() == [str(images["corrupt"])]


# ---- musk zeroshot ----------------------------------------------------------------------------------


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def check_probabilities(rows, files, expected, classes=CLASSES):
    """Rows ``file, p..., prediction`` against reference probabilities for ``files``."""
    assert [r[0] for r in rows] == [str(f) for f in files]
    probs = np.array([[float(v) for v in r[1 : 1 + len(classes)]] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=5e-4)  # printed with 4 decimals
    np.testing.assert_allclose(probs, expected.numpy(), atol=6e-5)
    assert [r[-1] for r in rows] == [classes[i] for i in expected.argmax(dim=1).tolist()]


def test_zeroshot_table_matches_the_library(tmp_path, images, weights, model, tokenizer_file, capsys):
    files = [images["rgb_png"], images["rgb_jpeg"], images["corrupt"], images["grey"], images["rgba"]]
    out = tmp_path / "results" / "zs.csv"
    args = ["zeroshot", *files, "--classes", *CLASSES, "--tokenizer", tokenizer_file, "-o", out, "--batch_size", 2]
    assert run(*args, *model_args(weights)) == 1
    printed = capsys.readouterr().out
    table = read_csv(out.read_text())
    assert read_csv(printed) == table  # the same table on stdout
    assert table[0] == ["file", *CLASSES, "prediction"]
    good = [f for f in files if f != images["corrupt"]]
    transform = musk.get_transform(model)
    x = torch.stack([transform(musk.load_image(f)) for f in good])
    expected = musk.zero_shot_classify(model, MuskTokenizer(tokenizer_file), x, CLASSES)
    check_probabilities(table[1:-1], good, expected)
    assert (expected.max(dim=1).values - expected.min(dim=1).values > 1e-2).all()  # not flat: a column mix-up shows
    failed = table[-1]
    assert failed[0] == str(images["corrupt"])
    assert failed[1:-1] == [""] * len(CLASSES)
    assert failed[-1].startswith("FAILED: ") and "c_broken.jpg" in failed[-1]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["config"]["classes"] == CLASSES and record["config"]["tokenizer"] == str(tokenizer_file)
    assert record["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_zeroshot_on_the_sample_slide(tmp_path, sample_slide, weights, model, tokenizer_file, capsys):
    """A real H&E file (Aperio .svs, 2220 x 2967) with upstream-style ``{c}`` templates."""
    templates = ["{c}.", "an H&E image of {c}."]
    args = ["zeroshot", sample_slide, "--classes", *CLASSES, "--templates", *templates, "--tokenizer", tokenizer_file]
    assert run(*args, *model_args(weights)) == 0
    table = read_csv(capsys.readouterr().out)
    assert table[0] == ["file", *CLASSES, "prediction"] and len(table) == 2
    x = musk.get_transform(model)(musk.load_image(sample_slide)).unsqueeze(0)
    expected = musk.zero_shot_classify(model, MuskTokenizer(tokenizer_file), x, CLASSES, templates)
    check_probabilities(table[1:], [sample_slide], expected)
    default = musk.zero_shot_classify(model, MuskTokenizer(tokenizer_file), x, CLASSES)
    assert not torch.allclose(default, expected, atol=1e-4)  # so the templates given were the ones used


def test_zeroshot_tokenizer_from_a_gated_hub_says_what_to_do(monkeypatch, tmp_path, images, weights, capsys):
    import huggingface_hub

    requested = []

    def refuse(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        raise hub_error(huggingface_hub.utils.GatedRepoError)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse)
    args = ["zeroshot", images["grey"], "--classes", *CLASSES, "-o", tmp_path / "zs.csv", *model_args(weights)]
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert requested == [("xiangjx/musk", "tokenizer.spm")]
    assert "tokenizer.spm" in err and ACCESS_HELP in err
    assert not (tmp_path / "zs.csv").exists()


# ---- errors -------------------------------------------------------------------------------------------


def error_line(capsys, command: str) -> str:
    """The CLI's stderr holds exactly one line, the error for ``command``."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"musk {command}: error: ")
    return lines[0]


@pytest.mark.parametrize("command", ["embed", "zeroshot"])
def test_missing_weights_file(tmp_path, images, command, capsys):
    missing = tmp_path / "nowhere" / "musk.safetensors"
    extra = ["--classes", "a", "b"] if command == "zeroshot" else []
    args = [command, images["grey"], *extra, "-o", tmp_path / "out.npz", "--model", TINY, "--weights", missing]
    assert run(*args) == 2
    assert str(missing) in error_line(capsys, command)
    assert list(tmp_path.iterdir()) == []


def test_gated_hub_weights_say_how_to_get_access(monkeypatch, tmp_path, images, capsys):
    import huggingface_hub

    def refuse(repo_id, filename, **kwargs):
        raise hub_error(huggingface_hub.utils.GatedRepoError)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse)
    args = ["embed", images["grey"], "-o", tmp_path / "e.npz", "--model", TINY, "--weights", "hf_hub:xiangjx/musk"]
    assert run(*args) == 2
    line = error_line(capsys, "embed")
    assert "no access to the gated repository xiangjx/musk" in line
    assert ACCESS_HELP in line and "HF_TOKEN" in line and "--weights PATH" in line
    assert not (tmp_path / "e.npz").exists()


def test_nonexistent_image_is_named(tmp_path, images, weights, capsys):
    missing = tmp_path / "no_such_patch.png"
    assert run("embed", images["grey"], missing, "-o", tmp_path / "e.npz", *model_args(weights)) == 2
    assert str(missing) in error_line(capsys, "embed")
    assert not (tmp_path / "e.npz").exists()


def test_folder_without_images(tmp_path, weights, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert run("embed", tmp_path / "empty", "-o", tmp_path / "e.npz", *model_args(weights)) == 2
    assert "no image files found" in capsys.readouterr().err


def test_checkpoint_of_another_architecture_lists_keys(tmp_path, images, capsys):
    other = tmp_path / "vit.safetensors"
    save_weights(timm.create_model("vit_tiny_patch16_224", num_classes=0), other)
    args = ["embed", images["grey"], "-o", tmp_path / "e.npz", "--model", TINY, "--weights", other]
    assert run(*args) == 2
    line = error_line(capsys, "embed")
    assert re.search(r"missing \d+: beit3\.", line)
    assert re.search(r"unexpected \d+: .*blocks\.0\.", line)


def test_verbose_shows_the_traceback(tmp_path, images):
    """With -v the exception propagates, for a full traceback."""
    args = ["-v", "embed", images["grey"], "-o", tmp_path / "e.npz", "--model", TINY, "--weights", tmp_path / "x"]
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        run(*args)


def test_bad_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        run("embed", "x.png", "-o", "e.npz", "--precision", "fp8")
    assert info.value.code == 2
    assert "--precision" in capsys.readouterr().err


@pytest.fixture
def no_model(monkeypatch):
    """Commands that must stop before building the model: building it fails the test."""

    def refuse(args):
        raise AssertionError("the model was built")

    for command in ("embed", "zeroshot"):
        monkeypatch.setattr(f"musk.cli.{command}.loaded_from_args", refuse)


@pytest.mark.parametrize("command", ["embed", "zeroshot"])
@pytest.mark.parametrize("case", ["json", "folder", "under_a_file"])
def test_unwritable_output_is_refused_before_any_work(tmp_path, images, weights, no_model, command, case, capsys):
    """A .json output would be overwritten by the provenance record written beside it."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    output = {"json": tmp_path / "out.json", "folder": tmp_path / "folder", "under_a_file": tmp_path / "a_file" / "o"}
    extra = ["--classes", "a", "b"] if command == "zeroshot" else []
    assert run(command, images["grey"], *extra, "-o", output[case], *model_args(weights)) == 2
    assert str(output[case]) in error_line(capsys, command)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder"]
    assert (tmp_path / "a_file").read_text() == "keep me" and not any((tmp_path / "folder").iterdir())


@pytest.mark.parametrize(
    ("classes", "templates", "message"),
    [
        (["a", "b"], ["a photo"], "must contain the class placeholder"),
        (["a", "b"], ["a photo of {x}"], "no other field"),
        (["a", "b"], ["{1} tissue"], "no other field"),
        (["a", "b"], ["{ tissue"], "not a valid format string"),
        (["a", "a"], ["{}"], "repeated: ['a']"),
        (["", "b"], ["{}"], "must not be blank"),
    ],
)
def test_zeroshot_bad_classes_or_templates_stop_before_the_model(
    tmp_path, images, weights, no_model, classes, templates, message, capsys
):
    args = ["zeroshot", images["grey"], "--classes", *classes, "--templates", *templates, "-o", tmp_path / "z.csv"]
    assert run(*args, *model_args(weights)) == 2
    assert message in error_line(capsys, "zeroshot")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("device", "message"), [("foo", "unknown device 'foo'"), ("cuda:0", "no usable CUDA GPU")])
def test_unusable_device_is_one_line(tmp_path, images, weights, device, message, capsys):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["embed", images["grey"], "-o", tmp_path / "e.npz", *model_args(weights), "--device", device]
    assert run(*args) == 2
    assert message in error_line(capsys, "embed")
    assert not (tmp_path / "e.npz").exists()


def test_unknown_architecture_lists_the_registered_ones(tmp_path, images, weights, capsys):
    args = ["embed", images["grey"], "-o", tmp_path / "e.npz", "--weights", weights, "--model", "musk_huge"]
    assert run(*args) == 2
    line = error_line(capsys, "embed")
    assert "unknown MUSK architecture 'musk_huge'" in line and TINY in line and "musk_large_patch16_384" in line


def test_a_file_that_is_not_a_tokenizer_is_named(tmp_path, images, weights, capsys):
    not_spm = tmp_path / "tokenizer.spm"
    not_spm.write_bytes(bytes(range(256)) * 4)
    args = ["zeroshot", images["grey"], "--classes", "a", "b", "--tokenizer", not_spm, *model_args(weights)]
    assert run(*args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' INFO line
    assert last.startswith("musk zeroshot: error: ") and f"{not_spm} is not a sentencepiece model" in last


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, tmp_path, images, weights, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("musk.loaded.embed_images", interrupted)
    assert run("embed", images["grey"], "-o", tmp_path / "e.npz", *model_args(weights)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "musk embed: interrupted"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        run("-v", "embed", images["grey"], "-o", tmp_path / "e.npz", *model_args(weights))


# ---- musk info ----------------------------------------------------------------------------------------


def info_lines(capsys) -> dict[str, str]:
    out = capsys.readouterr().out
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.strip().splitlines())


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    """An empty huggingface cache in tmp_path, a token set, and a hub that must not be asked."""
    import huggingface_hub
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_notarealtoken")

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    return cache


def test_info_offline_prints_versions_and_weights_status(hub_cache, capsys):
    assert run("info", "--offline") == 0
    lines = info_lines(capsys)
    assert lines["musk-pathology"] == musk.__version__
    assert lines["torch"].startswith(f"{torch.__version__} (")
    assert lines["timm"] == timm.__version__
    assert lines["devices"].split(", ")[0] == "cpu"
    assert lines["hf cache"] == str(hub_cache)
    assert lines["hf token"] == "set"
    assert lines["weights hf_hub:xiangjx/musk"] == "not in the cache (offline: the hub was not asked)"


def test_info_finds_the_weights_in_the_cache(hub_cache, capsys):
    cached, _ = fake_hub_cache(hub_cache, "xiangjx/musk", "model.safetensors", b"weights")
    assert run("info", "--offline") == 0
    assert info_lines(capsys)["weights hf_hub:xiangjx/musk"] == f"in the cache: {cached}"
    assert run("info", "--weights", "hf_hub:someone/else", "--offline") == 0  # another repository: not cached
    assert info_lines(capsys)["weights hf_hub:someone/else"].startswith("not in the cache")


def test_info_offline_mode_from_the_environment_does_not_ask(hub_cache, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert run("info") == 0
    assert info_lines(capsys)["weights hf_hub:xiangjx/musk"] == "not in the cache (offline: the hub was not asked)"


def test_info_asks_the_hub_when_online(hub_cache, monkeypatch, capsys):
    import huggingface_hub

    asked = []

    def unreachable(url, **kwargs):
        asked.append(url)
        raise ConnectionError("no route to host\nsecond line")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    assert run("info") == 0
    status = info_lines(capsys)["weights hf_hub:xiangjx/musk"]
    assert status == "not in the cache and not reachable: ConnectionError: no route to host"
    assert len(asked) == 1 and "xiangjx/musk" in asked[0] and "model.safetensors" in asked[0]
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: object())
    assert run("info") == 0
    assert info_lines(capsys)["weights hf_hub:xiangjx/musk"] == "not in the cache; downloadable from the hub"


def test_info_about_local_weights(hub_cache, weights, model, tmp_path, capsys):
    tensors = len(model.state_dict())
    assert run("info", "--weights", weights) == 0
    assert info_lines(capsys)[f"weights {weights}"] == f"local file {weights} ({tensors} tensors)"
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 8)
    assert run("info", "--weights", garbage) == 0
    assert info_lines(capsys)[f"weights {garbage}"].startswith(f"not usable: {garbage} is not a readable safetensors")
    missing = tmp_path / "missing.safetensors"
    assert run("info", "--weights", missing) == 0
    status = info_lines(capsys)[f"weights {missing}"]
    assert status.startswith("not usable: weights file") and "does not exist" in status
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert run("info", "--weights", folder) == 0
    assert info_lines(capsys)[f"weights {folder}"].startswith(f"not usable: no weights file in directory {folder}")
    shutil.copy(weights, folder / "model.safetensors")
    assert run("info", "--weights", folder) == 0
    assert info_lines(capsys)[f"weights {folder}"] == f"local file {folder / 'model.safetensors'} ({tensors} tensors)"


# ---- real processes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """The real commands, started together (each pays for importing torch and timm)."""
    script = shutil.which("musk", path=str(Path(sys.executable).parent))
    assert script is not None, "the musk console script is not installed next to this python"
    root = tmp_path_factory.mktemp("processes")
    cache = root / "hf" / "hub"
    cached, _ = fake_hub_cache(cache, "xiangjx/musk", "model.safetensors", b"weights")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HOME": str(root / "hf")}
    commands = {
        "help": [sys.executable, "-m", "musk", "--help"],
        "info": [script, "info", "--offline"],
    }
    started = {
        name: subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for name, argv in commands.items()
    }
    done = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(commands[name], proc.returncode, out, err)
    return done, {"cache": cache, "cached": cached}


def test_python_dash_m_musk_help(processes):
    proc = processes[0]["help"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: musk")
    for command in ("info", "embed", "zeroshot"):
        assert command in proc.stdout


def test_dunder_main_exits_with_the_status_of_main(monkeypatch, tmp_path, capsys):
    """``python -m musk`` (run here in-process through runpy) passes main's return value to sys.exit."""
    import runpy

    missing = tmp_path / "no_such_patch.png"
    monkeypatch.setattr(sys, "argv", ["musk", "embed", str(missing), "-o", str(tmp_path / "e.npz"), "--model", TINY])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("musk", run_name="__main__")
    assert info.value.code == 2
    assert str(missing) in error_line(capsys, "embed")


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "musk"]
    assert entry.value == "musk.cli:main" and entry.load() is main


def test_console_script_info_reads_the_cache_from_the_environment(processes):
    proc, paths = processes[0]["info"], processes[1]
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"^musk-pathology\s+{re.escape(musk.__version__)}$", proc.stdout, re.M)
    assert re.search(rf"^hf cache\s+{re.escape(str(paths['cache']))}$", proc.stdout, re.M)
    assert re.search(
        rf"^weights hf_hub:xiangjx/musk\s+in the cache: {re.escape(str(paths['cached']))}$", proc.stdout, re.M
    )


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        run("nonsense")
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_zeroshot_finds_the_tokenizer_beside_local_weights(monkeypatch, tmp_path, images, weights, capsys):
    """A folder holding model.safetensors and tokenizer.spm works offline without --tokenizer."""
    import shutil

    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    folder = tmp_path / "musk"
    folder.mkdir()
    shutil.copy(weights, folder / "model.safetensors")
    shutil.copy(shared_path("assets", "tokenizer.spm"), folder / "tokenizer.spm")
    out = tmp_path / "zs.csv"
    args = ["zeroshot", images["grey"], "--classes", *CLASSES, "--model", TINY, "--weights", folder, "-o", out]
    assert run(*args, "--device", "cpu") == 0
    table = read_csv(capsys.readouterr().out)
    assert table[0] == ["file", *CLASSES, "prediction"] and len(table) == 2
    assert json.loads(out.with_suffix(".json").read_text())["config"]["tokenizer"] == str(folder / "tokenizer.spm")


def test_info_reads_the_cache_dir_given(hub_cache, tmp_path, capsys):
    other = tmp_path / "elsewhere"
    cached, _ = fake_hub_cache(other, "xiangjx/musk", "model.safetensors", b"weights")
    assert run("info", "--offline", "--cache_dir", other) == 0
    lines = info_lines(capsys)
    assert lines["hf cache"] == str(other)
    assert lines["weights hf_hub:xiangjx/musk"] == f"in the cache: {cached}"


#: What the extras bring; the core install (``pip install musk-pathology``, ``make demo``) has none of them.
EXTRA_MODULES = ["pandas", "sklearn", "matplotlib", "h5py", "openslide", "skimage", "scipy", "tifffile"]
EXTRA_MODULES += ["accelerate", "webdataset", "sksurv", "lifelines", "open_clip", "pyarrow", "openpyxl"]


def test_the_command_starts_with_only_the_core_installed():
    """Every subcommand's parser builds without the extras, so ``musk zeroshot`` works on a core install."""
    script = (
        f"import sys\nfor m in {EXTRA_MODULES!r}:\n    sys.modules[m] = None\n"
        "from musk.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    for argv in (["--help"], ["zeroshot", "--help"], ["bench", "eval", "--help"], ["wsi", "run", "--help"]):
        proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage: musk")
        if argv == ["--help"]:
            assert all(command in proc.stdout for command in ("bench", "wsi", "mil", "vqa", "pretrain"))


# ---- hardening (issue 19): outputs, inputs, options, the hub ------------------------------------------


def test_embed_refuses_an_output_that_is_not_npz(tmp_path, images, weights, no_model, capsys):
    assert run("embed", images["grey"], "-o", tmp_path / "out.csv", *model_args(weights)) == 2
    assert "writes .npz files" in error_line(capsys, "embed")
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_option_is_named_not_reported_as_a_missing_one(images, capsys):
    with pytest.raises(SystemExit) as info:
        run("embed", images["grey"], "--outptu", "x.npz")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --outptu (did you mean --output?)" in err
    assert "required" not in err


def test_an_output_where_nothing_can_be_written_is_refused_before_any_work(images, weights, no_model, capsys):
    assert run("embed", images["grey"], "-o", "/proc/musk-test/e.npz", *model_args(weights)) == 2
    line = error_line(capsys, "embed")
    assert "/proc/musk-test/e.npz" in line and "cannot write in /proc" in line


def test_a_full_disk_is_one_line_saying_what_to_do(monkeypatch, tmp_path, images, weights, capsys):
    import errno

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("musk.embed.Embeddings.save", full)
    assert run("embed", images["grey"], "-o", tmp_path / "e.npz", *model_args(weights)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("musk embed: error: ")
    assert "No space left on device" in line and "e.npz" in line and "free some space" in line


def test_a_named_pipe_or_broken_link_among_the_inputs_is_listed_as_failed(tmp_path, images, weights):
    import os
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "e.npz"
    cmd = [sys.executable, "-m", "musk", "embed", folder, folder / "pipe.png", images["grey"], "-o", out]
    proc = subprocess.run([str(c) for c in [*cmd, *model_args(weights)]], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    data = load_npz(out)
    assert data["files"].tolist() == [str(images["grey"])]
    assert sorted(data["failed_files"].tolist()) == [str(folder / "gone.png"), str(folder / "pipe.png")]
    errors = " ".join(data["failed_errors"].tolist())
    assert "broken symbolic link" in errors and "not a regular file" in errors


def test_zeroshot_table_cells_are_safe_for_spreadsheets(tmp_path, images, weights, tokenizer_file, capsys):
    out = tmp_path / "zs.csv"
    classes = ['=HYPERLINK("http://x","y")', "stroma"]
    args = ["zeroshot", images["grey"], "--classes", *classes, "--tokenizer", tokenizer_file, "-o", out]
    assert run(*args, *model_args(weights)) == 0
    rows = read_csv(out.read_text())
    assert rows[0] == ["file", "'" + classes[0], "stroma", "prediction"]
    assert rows[1][-1] in ("'" + classes[0], "stroma")
    assert read_csv(capsys.readouterr().out)[0] == rows[0]


def test_a_missing_tokenizer_names_the_option_before_the_model_loads(monkeypatch, tmp_path, images, weights, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr("musk.loaded.create_model", refuse)
    args = ["zeroshot", images["grey"], "--classes", *CLASSES, "--tokenizer", tmp_path / "no.spm"]
    assert run(*args, *model_args(weights)) == 2
    line = error_line(capsys, "zeroshot")
    assert "no.spm does not exist" in line and "--tokenizer" in line


def test_a_tokenizer_the_hub_cannot_give_names_the_tokenizer_option(monkeypatch, images, weights, capsys):
    import huggingface_hub

    def refuse(repo_id, filename, **kwargs):
        raise hub_error(huggingface_hub.utils.GatedRepoError)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse)
    assert run("zeroshot", images["grey"], "--classes", *CLASSES, *model_args(weights)) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("musk zeroshot: error: ")
    assert "--tokenizer PATH" in line and "--set tokenizer=PATH" in line and "--weights PATH" not in line


def test_an_unreachable_hub_is_detected_once_and_only_the_cache_is_asked(monkeypatch, tmp_path):
    import socket

    import musk.models.weights as weights_module

    probes, calls = [], []

    def no_network(address, timeout=None):
        probes.append(address)
        raise OSError("Name or service not known")

    def cache_only(repo_id, filename, **kwargs):
        calls.append(kwargs)
        raise hub_error(__import__("huggingface_hub").utils.LocalEntryNotFoundError)

    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(weights_module, "_hub_reachable", None)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", cache_only)
    for _ in range(2):
        with pytest.raises(musk.WeightsUnavailableError, match="set HF_HUB_OFFLINE=1"):
            musk.get_tokenizer(cache_dir=tmp_path)
    assert len(probes) == 1 and probes[0][0] == "huggingface.co"
    assert calls == [{"cache_dir": tmp_path, "local_files_only": True}] * 2


def test_embed_and_zeroshot_equal_their_python_calls(tmp_path, embedded, images, weights, tokenizer_file):
    from musk.zeroshot import write_table

    loaded = musk.load(TINY, weights=weights, device="cpu")
    python = loaded.embed_images(list_images_of(images), with_head=False, normalize=False, batch_size=2)
    python.save(tmp_path / "python.npz")
    cli, py = load_npz(embedded[1]), load_npz(tmp_path / "python.npz")
    assert cli.keys() == py.keys() and all(np.array_equal(cli[k], py[k]) for k in cli)

    out = tmp_path / "zs.csv"
    assert (
        run(
            "zeroshot",
            images["folder"],
            "--classes",
            *CLASSES,
            "--tokenizer",
            tokenizer_file,
            "-o",
            out,
            *model_args(weights),
        )
        == 1
    )  # fmt: skip  (the corrupt file)
    named = musk.load(TINY, weights=weights, tokenizer=tokenizer_file)
    write_table(named.classify(musk.images.list_images(images["folder"]), CLASSES), tmp_path / "python.csv")
    assert out.read_text() == (tmp_path / "python.csv").read_text()


def list_images_of(images) -> list:
    return musk.images.list_images([images["folder"], images["extra"]])
