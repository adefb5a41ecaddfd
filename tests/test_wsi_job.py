"""musk wsi jobs end to end: the real slide, a synthetic pyramid, glass, a corrupt file and a slide without mpp
through every stage with the tiny model; resuming, refusing changed settings, the CLI."""

import csv
import json
import logging
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from musk import get_transform
from musk.cli import main
from musk.files import file_sha256
from musk.settings import SettingsError
from musk.tokenizer import MuskTokenizer
from musk.wsi import extract as extract_module
from musk.wsi.extract import projected
from musk.wsi.h5 import read_patch_file
from musk.wsi.job import WsiJobConfig, exclusive_lock, heatmap_job, run_wsi_job
from musk.wsi.patching import plan_patches
from musk.wsi.readers import open_slide
from musk.wsi.tissue import TissueMask
from musk.zeroshot import class_embeddings, probabilities, zero_shot_classify
from weights_file import save_weights
from wsi_synthetic import slide_pixels, write_pyramid

TINY = "musk_tiny_patch16_64"
SQUARES = [(256, 256, 1024, 1024), (1280, 512, 1792, 1280)]
CLASSES = ["tumor", "stroma"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(weights file, the model saved in it)."""
    torch.manual_seed(3)
    model = timm.create_model(TINY).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(model, str(path))
    return path, model


@pytest.fixture(scope="module")
def slides(tmp_path_factory, sample_slide):
    folder = tmp_path_factory.mktemp("slides")
    shutil.copy(sample_slide, folder / "cmu.svs")
    write_pyramid(folder / "s40.tif", slide_pixels((2048, 1536), SQUARES), mpp=0.25, levels=3)
    write_pyramid(folder / "glass.tif", slide_pixels((1024, 768), []), mpp=0.5, levels=2)
    write_pyramid(folder / "nompp.tif", slide_pixels((1024, 768), [(256, 256, 768, 768)], seed=2), mpp=None, levels=2)
    (folder / "corrupt.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    (folder / "notes.txt").write_text("not a slide")
    return folder


def job_args(slides, job_dir, weights, *extra):
    common = ["--model", TINY, "--weights", str(weights), "--patch_size", "256", "--batch_size", "8", "--device", "cpu"]
    return ["wsi", "run", "--slides", str(slides), "--job_dir", str(job_dir), *common, *extra]


def read_status(job_dir):
    with open(job_dir / "status.csv", newline="") as f:
        return {row["slide"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, slides, tiny, tokenizer_file):
    job_dir = tmp_path_factory.mktemp("job")
    status = main(job_args(slides, job_dir, tiny[0], "--classes", *CLASSES, "--tokenizer", str(tokenizer_file)))
    logging.getLogger("musk").handlers.clear()
    return job_dir, status


def test_mixed_folder_ends_with_the_right_status_for_each_slide(finished_job):
    job_dir, status = finished_job
    assert status == 1  # some slides failed
    rows = read_status(job_dir)
    assert list(rows) == ["cmu", "corrupt", "glass", "nompp", "s40"]  # sorted; notes.txt is not a slide
    assert {k: r["status"] for k, r in rows.items()} == {
        "cmu": "done", "corrupt": "failed", "glass": "done", "nompp": "failed", "s40": "done",
    }  # fmt: skip
    assert "corrupt.svs" in rows["corrupt"]["error"] and "SlideError" in rows["corrupt"]["error"]
    assert "--mpp" in rows["nompp"]["error"]
    assert rows["glass"]["patches"] == "0" and rows["s40"]["patches"] == "1"  # 512 level-0 px: one fits a square
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["status"] == {"done": 3, "failed": 2} and summary["world_size"] == 1
    assert summary["patches"] == sum(int(r["patches"]) for r in rows.values() if r["status"] == "done")
    config = json.loads((job_dir / "config.json").read_text())
    assert config["settings"]["patch"]["patch_size"] == 256 and config["weights"]["sha256"]
    assert not list(job_dir.rglob(".*partial*"))  # no temporary file left behind


def test_feature_files_match_the_geometry_and_the_model(finished_job, slides, tiny):
    job_dir, _ = finished_job
    _, model = tiny
    for name, suffix in (("cmu", ".svs"), ("s40", ".tif")):
        features = read_patch_file(job_dir / "features" / f"{name}.h5")
        patches = read_patch_file(job_dir / "patches" / f"{name}.h5")
        np.testing.assert_array_equal(features.coords, patches.coords)
        with open_slide(slides / f"{name}{suffix}") as reader:
            tissue = TissueMask.load(job_dir / "masks" / f"{name}.png", reader.dimensions)
            grid = plan_patches(reader, tissue, patch_size=256, magnification=20)
            np.testing.assert_array_equal(features.coords, grid.coords)
            # the first patches, read and preprocessed by hand, through the model
            images = []
            for x, y in grid.coords[:3]:
                patch = reader.read_region((x, y), grid.level, (grid.read_size, grid.read_size))
                patch = patch.resize((256, 256), Image.Resampling.BICUBIC, reducing_gap=None)
                images.append(get_transform(model)(patch))
        want = model.encode_image(torch.stack(images), with_head=False, normalize=False)
        np.testing.assert_allclose(features.features[:3], want.detach().numpy(), rtol=1e-4, atol=1e-5)
        attrs = features.attrs
        assert attrs["feature_kind"] == "cls" and attrs["encoder"] == TINY and attrs["patch_size"] == 256
        assert attrs["level0_mpp"] == reader.mpp and attrs["patch_size_level0"] == grid.patch_size_level0
        assert features.features.shape == (len(grid.coords), 64) and features.features.dtype == np.float32
        with h5py.File(job_dir / "features" / f"{name}.h5") as f:  # TRIDENT's reading, also after the heatmap
            assert f["coords"].attrs["patch_size_level0"] == grid.patch_size_level0
            assert f["features"].attrs["encoder"] == TINY and f["features"].attrs["feature_kind"] == "cls"
    glass = read_patch_file(job_dir / "features" / "glass.h5")
    assert glass.coords.shape == (0, 2) and glass.features.shape == (0, 64)
    s40 = read_patch_file(job_dir / "features" / "s40.h5")
    assert s40.attrs["patch_level"] == 1 and s40.attrs["level0_magnification"] == 40  # read from the 20x level
    assert not (job_dir / "features" / "corrupt.h5").exists()


def test_zero_shot_map_matches_direct_classification(finished_job, slides, tiny, tokenizer_file):
    job_dir, _ = finished_job
    _, model = tiny
    data = read_patch_file(job_dir / "features" / "cmu.h5")
    probs = data.arrays["zeroshot_probabilities"]
    assert json.loads(data.attrs["zeroshot_classes"]) == CLASSES
    assert probs.shape == (len(data), 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    with open_slide(slides / "cmu.svs") as reader:
        images = torch.stack([get_transform(model)(reader.read_region(xy, 0, (256, 256))) for xy in data.coords[:4]])
    direct = zero_shot_classify(model, MuskTokenizer(tokenizer_file), images, CLASSES)
    np.testing.assert_allclose(probs[:4], direct.numpy(), atol=2e-4)
    for png in ("00_tumor.png", "01_stroma.png"):
        with (
            Image.open(job_dir / "heatmaps" / "s40" / png) as heatmap,
            Image.open(job_dir / "thumbnails" / "s40.png") as thumb,
        ):
            assert heatmap.size == thumb.size
            changed = (np.asarray(heatmap.convert("RGB")) != np.asarray(thumb.convert("RGB"))).any(axis=2)
            assert changed[700, 700] and not changed[50, 50]  # tinted on the one tissue patch only
    assert (job_dir / "contours" / "cmu.png").is_file() and (job_dir / "heatmaps" / "glass" / "00_tumor.png").is_file()


def test_rerun_skips_finished_slides_and_csv_mpp_rescues_a_slide(finished_job, slides, tiny, tmp_path):
    job_dir, _ = finished_job
    copy = tmp_path / "job"
    shutil.copytree(job_dir, copy)
    before = {p: p.stat().st_mtime_ns for p in (copy / "features").glob("*.h5")}
    table = tmp_path / "slides.csv"
    table.write_text(f"path,mpp\n{slides / 'cmu.svs'},\n{slides / 's40.tif'},\n{slides / 'nompp.tif'},0.5\n")
    assert main(job_args(table, copy, tiny[0])) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing redone
    rows = read_status(copy)
    assert list(rows) == ["cmu", "s40", "nompp"] and {r["status"] for r in rows.values()} == {"done"}
    rescued = read_patch_file(copy / "features" / "nompp.h5")
    assert rescued.attrs["level0_mpp"] == 0.5 and len(rescued) == 2 * 2  # 512 px of tissue, 256 px patches


def test_changed_settings_are_refused(finished_job, slides, tiny, tmp_path, capsys):
    job_dir, _ = finished_job
    copy = tmp_path / "job"
    shutil.copytree(job_dir, copy)
    assert main(job_args(slides, copy, tiny[0], "--mag", "10")) == 2
    assert "magnification: 20.0 then, 10.0 now" in capsys.readouterr().err
    assert main(job_args(slides, copy, tiny[0], "--features", "ms")) == 2
    assert "features: 'cls' then, 'ms' now" in capsys.readouterr().err


def test_stages_one_by_one_and_heatmap_from_the_job(slides, tiny, tmp_path, tokenizer_file, sample_slide, monkeypatch):
    job_dir = tmp_path / "job"
    base = ["--slides", str(slides / "s40.tif"), "--job_dir", str(job_dir)]
    assert main(["wsi", "segment", *base]) == 0
    assert (job_dir / "masks" / "s40.png").is_file() and not (job_dir / "patches").exists()
    assert main(["wsi", "patch", *base, "--patch_size", "128", "--mag", "40"]) == 0
    assert len(read_patch_file(job_dir / "patches" / "s40.h5")) == 6 * 6 + 4 * 6
    run_in_streams, streams_used = extract_module.run_in_streams, []

    def recording(fn, batch, streams):
        streams_used.append(streams)
        return run_in_streams(fn, batch, streams)

    monkeypatch.setattr(extract_module, "run_in_streams", recording)
    extract = ["--model", TINY, "--weights", str(tiny[0]), "--device", "cpu", "--features", "ms", "--streams", "3"]
    assert main(["wsi", "extract", *base, "--patch_size", "128", "--mag", "40", *extract]) == 0
    assert streams_used == [3, 3]  # 60 patches in batches of 32, each split over 3 calls
    ms = read_patch_file(job_dir / "features" / "s40.h5")
    assert ms.features.shape == (60, 128) and ms.attrs["feature_kind"] == "ms"
    heatmap = ["wsi", "heatmap", "--job_dir", str(job_dir), "--classes", *CLASSES, "--tokenizer", str(tokenizer_file)]
    assert main([*heatmap, "--device", "cpu"]) == 0  # slides, geometry and model from the job
    probs = read_patch_file(job_dir / "features" / "s40.h5").arrays["zeroshot_probabilities"]
    # ms features: the head reads their scale-1 half, as encode_image(with_head=True, ms_aug=True) does
    _, model = tiny
    with torch.inference_mode():
        head = torch.nn.functional.normalize(model.vision_head(torch.from_numpy(ms.features[:, :64])), dim=-1)
    want = probabilities(model, head, class_embeddings(model, MuskTokenizer(tokenizer_file), CLASSES))
    np.testing.assert_allclose(probs, want.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ms.features, read_patch_file(job_dir / "features" / "s40.h5").features)


def test_library_call_returns_records(slides, tiny, tmp_path):
    config = WsiJobConfig(model=TINY, weights=str(tiny[0]), patch_size=128, features="proj", device="cpu")
    result = run_wsi_job([slides / "glass.tif", slides / "missing.svs"], tmp_path / "job", config)
    assert [r["status"] for r in result.records] == ["done", "failed"]
    assert result.failed == ["missing"] and "missing.svs" in result.records[1]["error"]


def test_leftovers_of_a_killed_run_are_removed_and_others_kept(slides, tmp_path):
    job_dir = tmp_path / "job"
    (job_dir / "features").mkdir(parents=True)
    mine = job_dir / "features" / ".glass.h5.0123abcd.partial.h5"
    other = job_dir / "features" / ".glass.b.h5.0123abcd.partial.h5"  # a slide named "glass.b", in flight
    mine.write_bytes(b"half")
    other.write_bytes(b"half")
    config = WsiJobConfig(model=TINY, weights=None, patch_size=128, device="cpu")
    assert run_wsi_job([slides / "glass.tif"], job_dir, config).failed == []
    assert not mine.exists() and other.exists()


def test_a_slide_killed_while_writing_its_record_gets_the_record_without_redoing_its_outputs(slides, tiny, tmp_path):
    job_dir = tmp_path / "job"
    config = WsiJobConfig(model=TINY, weights=str(tiny[0]), patch_size=128, features="proj", device="cpu")
    assert run_wsi_job([slides / "glass.tif"], job_dir, config).failed == []
    record = json.loads((job_dir / "status" / "glass.json").read_text())
    (job_dir / "status" / "glass.json").unlink()
    leftover = job_dir / "status" / ".glass.json.0123abcd.partial.json"
    leftover.write_text("{")
    features = (job_dir / "features" / "glass.h5").stat().st_mtime_ns
    result = run_wsi_job([slides / "glass.tif"], job_dir, config)
    assert result.records[0]["status"] == "done" and result.records[0]["patches"] == record["patches"]
    assert json.loads((job_dir / "status" / "glass.json").read_text())["patches"] == record["patches"]
    assert not leftover.exists()
    assert (job_dir / "features" / "glass.h5").stat().st_mtime_ns == features


def test_leftovers_of_the_job_files_are_removed(slides, tmp_path):
    """A process killed while rewriting status.csv (or config.json, summary.json) leaves its temporary file."""
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    stale = [job_dir / ".status.csv.0123abcd.partial.csv", job_dir / ".config.json.0123abcd.partial.json",
             job_dir / ".summary.json.0123abcd.partial.json"]  # fmt: skip
    kept = job_dir / ".notes.txt.0123abcd.partial.txt"  # not the job's
    for path in [*stale, kept]:
        path.write_bytes(b"half")
    config = WsiJobConfig(model=TINY, weights=None, patch_size=128, device="cpu")
    assert run_wsi_job([slides / "glass.tif"], job_dir, config, stages=["segment"]).failed == []
    assert not any(p.exists() for p in stale) and kept.exists()
    assert (job_dir / "status.csv").is_file() and (job_dir / "summary.json").is_file()


def test_a_waiting_lock_waits_for_the_process_holding_it(tmp_path):
    """The job files' lock: a writer in another process keeps it until done (its temporary file is not stale)."""
    path, finished = tmp_path / ".job.lock", tmp_path / "finished"
    script = (
        f"import fcntl, pathlib, sys, time; f = open({str(path)!r}, 'a+'); fcntl.lockf(f, fcntl.LOCK_EX); "
        f"print('held', flush=True); sys.stdin.readline(); time.sleep(0.5); pathlib.Path({str(finished)!r}).touch()"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with exclusive_lock(path) as taken:
        assert not taken
    holder.stdin.write("go\n")
    holder.stdin.flush()
    with exclusive_lock(path, wait=True) as taken:
        assert taken and finished.exists()  # the holder had finished its work
    holder.wait(timeout=30)


def test_segment_takes_max_saturation_and_pins_it(slides, tmp_path, capsys):
    job_dir = tmp_path / "job"
    base = ["wsi", "segment", "--slides", str(slides / "s40.tif"), "--job_dir", str(job_dir)]
    assert main([*base, "--max_saturation", "0.3"]) == 0
    assert json.loads((job_dir / "config.json").read_text())["settings"]["segment"]["max_saturation"] == 0.3
    assert main(base) == 2
    assert "max_saturation: 0.3 then, 0.2 now" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--overlap", "500"], "overlap must be in [0, patch_size), got 500 for patch_size 256"),
        (["--overlap", "-1"], "overlap must be in [0, patch_size), got -1"),
        (["--min_tissue", "1.5"], "min_tissue is a fraction in [0, 1], got 1.5"),
        (["--batch_size", "0"], "batch_size must be at least 1, got 0"),
        (["--min_saturation", "0.5"], "need 0 <= min_saturation <= max_saturation <= 1, got 0.5 and 0.2"),
        (["--num_workers", "-2"], "num_workers must not be negative, got -2"),
    ],
)
def test_invalid_settings_stop_the_job_before_anything_is_pinned_or_done(
    flags, message, slides, tiny, tmp_path, capsys
):
    job_dir = tmp_path / "job"
    assert main(job_args(slides, job_dir, tiny[0], *flags)) == 2
    assert message in capsys.readouterr().err
    assert not job_dir.exists()  # no slide segmented, no config.json pinning the rejected settings


def test_a_run_refused_for_its_settings_pins_nothing(slides, tiny, tmp_path, capsys):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    assert main(job_args(slides / "s40.tif", job_dir, tiny[0], "--overlap", "500")) == 2
    assert main(job_args(slides / "s40.tif", job_dir, tiny[0])) == 0  # was refused: "made with other patch settings"
    assert read_status(job_dir)["s40"]["status"] == "done"


@pytest.mark.parametrize(
    "flags", [["--mag", "0"], ["--target_mpp", "-1"], ["--thumbnail_size", "0"], ["--patch_size", "0"], ["--mpp", "0"]]
)
def test_non_positive_sizes_are_usage_errors(flags, slides, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["wsi", "patch", "--slides", str(slides), "--job_dir", str(tmp_path / "job"), *flags])
    assert stop.value.code == 2 and f"argument {flags[0]}: must be" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def test_library_job_checks_its_config_once(slides, tmp_path):
    for config, message in [
        (WsiJobConfig(thumbnail_size=0), "thumbnail_size must be at least 1, got 0"),
        (WsiJobConfig(magnification=0), "magnification must be positive, got 0"),
        (WsiJobConfig(mpp=0), "mpp must be positive, got 0"),
        (WsiJobConfig(magnification=None), "give exactly one of magnification"),
        (WsiJobConfig(features="bogus", precision="fp8"), "features must be one of .*precision must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_wsi_job(slides, tmp_path / "job", config, stages=("patch",))
    for classes, templates, message in [
        ((), ("{}.",), "heatmap stage: zero-shot classification needs at least one of class_names"),
        (("tumor", "tumor"), ("{}.",), r"heatmap stage: class names must be distinct; repeated: \['tumor'\]"),
        (("tumor", "stroma"), ("a photo",), "heatmap stage: template 'a photo' must contain the class placeholder"),
    ]:
        config = WsiJobConfig(weights=None, classes=classes, templates=templates)
        with pytest.raises(ValueError, match=message):
            run_wsi_job(slides, tmp_path / "job", config, stages=("heatmap",))
    assert not (tmp_path / "job").exists()


def test_job_dir_that_is_a_file_is_a_usage_error(slides, tmp_path, capsys):
    not_a_folder = tmp_path / "job"
    not_a_folder.write_text("a file")
    assert main(["wsi", "segment", "--slides", str(slides), "--job_dir", str(not_a_folder)]) == 2
    err = capsys.readouterr().err
    assert f"the job directory {not_a_folder} is a file" in err and len(err.strip().splitlines()) == 1


def test_precision_is_pinned_recorded_and_heatmap_takes_the_jobs(slides, tiny, tmp_path, tokenizer_file, capsys):
    job_dir = tmp_path / "job"
    assert main(job_args(slides / "s40.tif", job_dir, tiny[0], "--precision", "bf16")) == 0
    features = read_patch_file(job_dir / "features" / "s40.h5")
    assert features.attrs["precision"] == "bf16"
    assert json.loads((job_dir / "config.json").read_text())["settings"]["extract"]["precision"] == "bf16"
    write_pyramid(tmp_path / "second.tif", slide_pixels((1024, 768), [(256, 256, 768, 768)]), mpp=0.25, levels=2)
    assert main(job_args(tmp_path / "second.tif", job_dir, tiny[0])) == 2  # fp32 next to bf16 features: refused
    assert "precision: 'bf16' then, 'fp32' now" in capsys.readouterr().err
    assert not (job_dir / "features" / "second.h5").exists()
    heatmap = ["wsi", "heatmap", "--job_dir", str(job_dir), "--classes", *CLASSES, "--tokenizer", str(tokenizer_file)]
    assert main([*heatmap, "--device", "cpu"]) == 0  # no --precision: the job's
    assert json.loads((job_dir / "config.json").read_text())["config"]["precision"] == "bf16"
    # a job made before precision was pinned: its last run's precision stands in
    config = json.loads((job_dir / "config.json").read_text())
    del config["settings"]["extract"]["precision"]
    (job_dir / "config.json").write_text(json.dumps(config))
    assert main(job_args(tmp_path / "second.tif", job_dir, tiny[0])) == 2
    assert "precision: 'bf16' then, 'fp32' now" in capsys.readouterr().err
    assert main(job_args(tmp_path / "second.tif", job_dir, tiny[0], "--precision", "bf16")) == 0
    assert read_patch_file(job_dir / "features" / "second.h5").attrs["precision"] == "bf16"


def test_heatmap_is_redone_for_other_templates_and_kept_for_the_same_prompts(finished_job, tiny, tmp_path,
                                                                              tokenizer_file):  # fmt: skip
    job_dir, _ = finished_job
    copy = tmp_path / "job"
    shutil.copytree(job_dir, copy)
    _, model = tiny
    templates = ["an H&E image of {}.", "{} tissue"]
    moved_tokenizer = tmp_path / "tokenizer.spm"  # the same file elsewhere: nothing to redo
    shutil.copy(tokenizer_file, moved_tokenizer)
    heatmap = ["wsi", "heatmap", "--job_dir", str(copy), "--classes", *CLASSES, "--device", "cpu"]
    before = {p: p.stat().st_mtime_ns for p in (copy / "features").glob("*.h5")}
    assert main([*heatmap, "--tokenizer", str(moved_tokenizer)]) == 1  # (the corrupt and mpp-less slides)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert main([*heatmap, "--tokenizer", str(tokenizer_file), "--templates", *templates]) == 1
    data = read_patch_file(copy / "features" / "s40.h5")
    assert json.loads(data.attrs["zeroshot_templates"]) == templates
    assert data.attrs["zeroshot_tokenizer_sha256"] == file_sha256(tokenizer_file)
    classes = class_embeddings(model, MuskTokenizer(tokenizer_file), CLASSES, templates)
    want = probabilities(model, projected(model, data.features, "cls"), classes)
    np.testing.assert_allclose(data.arrays["zeroshot_probabilities"], want.numpy(), atol=1e-5)
    old = read_patch_file(job_dir / "features" / "s40.h5").arrays["zeroshot_probabilities"]
    assert np.abs(data.arrays["zeroshot_probabilities"] - old).max() > 1e-4  # other prompts, other numbers
    assert json.loads((copy / "config.json").read_text())["config"]["templates"] == templates


def test_heatmaps_of_classes_no_longer_asked_for_are_removed(finished_job, tmp_path, tokenizer_file):
    job_dir, _ = finished_job
    copy = tmp_path / "job"
    shutil.copytree(job_dir, copy)
    folder = copy / "heatmaps" / "s40"
    (folder / "my notes.png").write_bytes(b"not written by musk")
    heatmap = ["wsi", "heatmap", "--job_dir", str(copy), "--tokenizer", str(tokenizer_file), "--device", "cpu"]
    assert main([*heatmap, "--classes", "tumor", "necrosis"]) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["00_tumor.png", "01_necrosis.png", "my notes.png"]
    assert main([*heatmap, "--classes", "tumor"]) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["00_tumor.png", "my notes.png"]


def test_heatmap_from_python_equals_the_cli(finished_job, tmp_path, tokenizer_file):
    """`musk wsi heatmap` and `musk.wsi.heatmap_job` given only the classes (and the tokenizer): the same files."""
    job_dir, _ = finished_job
    by_cli, by_python = tmp_path / "cli", tmp_path / "python"
    for copy in (by_cli, by_python):
        shutil.copytree(job_dir, copy)
    classes = ["necrosis", "tumor"]
    heatmap = ["wsi", "heatmap", "--job_dir", str(by_cli), "--classes", *classes, "--tokenizer", str(tokenizer_file)]
    assert main([*heatmap, "--device", "cpu"]) == 1  # (the corrupt and mpp-less slides)
    result = heatmap_job(by_python, classes, tokenizer=str(tokenizer_file), device="cpu")
    assert result.failed == ["corrupt", "nompp"]
    assert result.summary == json.loads((by_cli / "summary.json").read_text())
    made = ["features/cmu.h5", "features/s40.h5", "heatmaps/s40/00_necrosis.png", "heatmaps/s40/01_tumor.png"]
    for name in made:
        assert (by_cli / name).read_bytes() == (by_python / name).read_bytes(), name
    assert not (by_python / "heatmaps" / "s40" / "01_stroma.png").exists()
    saved = [json.loads((d / "config.json").read_text()) for d in (by_cli, by_python)]
    assert saved[0]["config"] == saved[1]["config"] and saved[0]["settings"] == saved[1]["settings"]
    assert saved[1]["config"]["patch_size"] == 256  # the job's geometry, not the default


def test_heatmap_takes_the_tokenizer_beside_the_jobs_weights(slides, tiny, tmp_path, tokenizer_file):
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(tiny[0], folder / "tiny.safetensors")
    shutil.copy(tokenizer_file, folder / "tokenizer.spm")
    job_dir = tmp_path / "job"
    config = WsiJobConfig(model=TINY, weights=str(folder / "tiny.safetensors"), patch_size=256, device="cpu")
    assert run_wsi_job([slides / "s40.tif"], job_dir, config).failed == []
    assert heatmap_job(job_dir, CLASSES, device="cpu").failed == []  # no tokenizer given: the one beside the weights
    assert json.loads((job_dir / "config.json").read_text())["tokenizer"]["path"] == str(folder / "tokenizer.spm")
    attrs = read_patch_file(job_dir / "features" / "s40.h5").attrs
    assert attrs["zeroshot_tokenizer_sha256"] == file_sha256(tokenizer_file) and attrs["patch_size"] == 256


def test_job_settings_name_the_key_and_where_it_came_from(finished_job, slides, tiny, tmp_path, capsys):
    job_dir, _ = finished_job
    copy = tmp_path / "job"
    shutil.copytree(job_dir, copy)
    record = json.loads((copy / "config.json").read_text())
    record["config"]["patch_size"] = "big"
    (copy / "config.json").write_text(json.dumps(record))
    with pytest.raises(SettingsError, match=r"job/config.json: patch_size must be an integer, got 'big'"):
        WsiJobConfig.from_job(copy, classes=CLASSES)
    assert main(["wsi", "heatmap", "--job_dir", str(copy), "--classes", *CLASSES]) == 2
    assert "config.json: patch_size must be an integer" in capsys.readouterr().err
    with pytest.raises(SettingsError, match=r"the settings given: unknown setting\(s\) colour"):
        WsiJobConfig.from_job(job_dir, colour="red")
    assert main(job_args(slides, tmp_path / "new", "random")) == 2  # the old spelling of none
    assert "random initialisation is spelled --weights none" in capsys.readouterr().err


def test_random_weights_are_fingerprinted_by_their_parameters(slides, tmp_path, capsys):
    job_dir = tmp_path / "job"
    args = ["wsi", "extract", "--slides", str(slides / "glass.tif"), "--job_dir", str(job_dir), "--model", TINY,
            "--weights", "none", "--patch_size", "128", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    weights = json.loads((job_dir / "config.json").read_text())["weights"]
    assert weights["random"] is True and len(weights["sha256"]) == 64
    assert read_patch_file(job_dir / "features" / "glass.h5").attrs["weights_sha256"] == weights["sha256"]
    assert main([*args, "--seed", "1"]) == 2  # other random weights
    assert f"weights_sha256: '{weights['sha256']}' then" in capsys.readouterr().err


def test_a_job_an_older_version_made_with_random_weights_goes_on(slides, tmp_path):
    """Older versions pinned weights_sha256 "random" for random weights: seeded alike, they are the same ones."""
    job_dir = tmp_path / "job"
    config = WsiJobConfig(model=TINY, weights=None, patch_size=128, device="cpu")
    assert run_wsi_job([slides / "glass.tif"], job_dir, config).failed == []

    def make_it_old():
        record = json.loads((job_dir / "config.json").read_text())
        record["settings"]["extract"]["weights_sha256"] = "random"
        record.pop("weights")
        (job_dir / "config.json").write_text(json.dumps(record))

    make_it_old()
    with pytest.raises(ValueError, match="weights_sha256: 'random' then"):  # another seed: other weights
        run_wsi_job([slides / "glass.tif"], job_dir, WsiJobConfig(**{**vars(config), "seed": 1}))
    result = run_wsi_job([slides / "glass.tif", slides / "s40.tif"], job_dir, config)
    assert [r["status"] for r in result.records] == ["done", "done"]
    pinned = json.loads((job_dir / "config.json").read_text())["settings"]["extract"]["weights_sha256"]
    assert len(pinned) == 64 and read_patch_file(job_dir / "features" / "s40.h5").attrs["weights_sha256"] == pinned
