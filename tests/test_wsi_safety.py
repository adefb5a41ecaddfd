"""musk wsi hardened (issue 19): slide names that would leave their folders, spreadsheet-safe status.csv, foreign
and unwritable job directories refused, damaged outputs redone, plain images limited and decoded once, a
mistyped slide folder a usage error, progress in patches, heatmaps with a colour scale."""

import csv
import json
import logging
import pickle
import shutil

import numpy as np
import pytest
import timm
import torch
from matplotlib import colormaps
from PIL import Image
from torch.utils.data import DataLoader

import musk
from musk.cli import main
from musk.wsi import readers as readers_module
from musk.wsi.dataset import PatchPreprocessing, SlidePatchDataset
from musk.wsi.extract import extract_slide_features
from musk.wsi.h5 import write_patch_file
from musk.wsi.job import WsiJobConfig, run_wsi_job
from musk.wsi.patching import plan_patches
from musk.wsi.readers import SlideError, open_slide
from musk.wsi.slides import list_slides
from musk.wsi.tissue import segment_tissue
from weights_file import save_weights
from wsi_synthetic import slide_pixels, write_pyramid

TINY = "musk_tiny_patch16_64"
TISSUE = [(256, 256, 768, 768)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(3)
    return save_weights(timm.create_model(TINY), tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 20x pyramid, 1024 x 768 px, one tissue square of 512 px."""
    return write_pyramid(tmp_path_factory.mktemp("slide") / "s.tif", slide_pixels((1024, 768), TISSUE), 0.5, 2)


@pytest.fixture(scope="module")
def png_slide(tmp_path_factory):
    """A plain-image slide (PNG, 20x once its mpp is given) with tissue."""
    path = tmp_path_factory.mktemp("png") / "plain.png"
    Image.fromarray(slide_pixels((768, 640), [(128, 128, 640, 512)], seed=4)).save(path)
    return path


def config(weights=None, **changes) -> WsiJobConfig:
    return WsiJobConfig(model=TINY, weights=None if weights is None else str(weights), patch_size=128,
                        device="cpu", **changes)  # fmt: skip


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---- 19.3: names that become paths -------------------------------------------------------------------------
def test_a_slide_named_dots_writes_inside_the_job_folders(slide, weights, tokenizer_file, tmp_path):
    dots = tmp_path / "...tif"  # its name without extension is "..": heatmaps/../ would be the job root
    shutil.copy(slide, dots)
    job_dir = tmp_path / "job"
    result = run_wsi_job([dots], job_dir, config(weights, classes=["tumor", "stroma"], tokenizer=str(tokenizer_file)),
                         ("heatmap",))  # fmt: skip
    assert sorted(p.name for p in job_dir.iterdir() if not p.name.startswith(".")) == [
        "config.json", "contours", "features", "heatmaps", "locks", "masks", "patches", "status", "status.csv",
        "summary.json", "thumbnails",
    ]  # fmt: skip
    assert result.failed == [] and result.records[0]["slide"] == "__"
    assert sorted(p.name for p in (job_dir / "heatmaps" / "__").iterdir()) == ["00_tumor.png", "01_stroma.png"]
    assert (job_dir / "features" / "__.h5").is_file() and (job_dir / "masks" / "__.png").is_file()


def test_slides_whose_safe_names_collide_are_refused(tmp_path):
    for name in ("_x.tif", ".x.tif"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match="under the same name '_x'.*_x.tif and .*\\.x.tif; rename one"):
        list_slides([tmp_path / "_x.tif", tmp_path / ".x.tif"])


# ---- 19.6: status.csv is spreadsheet-safe ------------------------------------------------------------------
def test_status_csv_cells_are_not_formulas(slide, tmp_path):
    formula = tmp_path / "=HYPERLINK(x).tif"
    shutil.copy(slide, formula)
    assert run_wsi_job([formula], tmp_path / "job", config(), ("segment",)).failed == []
    with open(tmp_path / "job" / "status.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["slide"] == "'=HYPERLINK(x)" and rows[0]["status"] == "done"
    assert (tmp_path / "job" / "masks" / "=HYPERLINK(x).png").is_file()  # the file keeps its name


# ---- 19.8: a folder that is not a job of ours ---------------------------------------------------------------
@pytest.mark.parametrize("files", [{"config.json": '{"my": "settings"}', "status.csv": "mine"}, {"notes.txt": "x"}])
def test_a_folder_of_other_files_is_refused_and_kept(files, slide, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    assert main(["wsi", "segment", "--slides", str(slide), "--job_dir", str(folder)]) == 2
    assert str(folder) in one_line_error(capsys)
    assert {p.name: p.read_text() for p in folder.iterdir()} == files  # nothing added, nothing overwritten


def test_a_job_of_ours_and_an_empty_folder_are_taken(slide, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / ".DS_Store").write_bytes(b"")
    assert run_wsi_job([slide], job_dir, config(), ("segment",)).failed == []
    assert run_wsi_job([slide], job_dir, config(), ("patch",)).failed == []  # config.json of ours: a job


# ---- 19.9: damaged outputs are redone ------------------------------------------------------------------------
def test_damaged_outputs_recorded_done_are_made_again(slide, weights, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("musk"), "propagate", True)  # (main() turns it off)
    job_dir = tmp_path / "job"
    assert run_wsi_job([slide], job_dir, config(weights)).failed == []
    files = {
        f: job_dir / f / f"s{suffix}" for f, suffix in (("masks", ".png"), ("patches", ".h5"), ("features", ".h5"))
    }
    made = {name: path.read_bytes() for name, path in files.items()}
    files["features"].write_bytes(made["features"][: len(made["features"]) // 2])  # cut short
    files["patches"].write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))  # garbage under the right name
    files["masks"].write_bytes(made["masks"][:-20])
    assert json.loads((job_dir / "status" / "s.json").read_text())["status"] == "done"
    assert run_wsi_job([slide], job_dir, config(weights)).records[0]["status"] == "done"
    assert {name: path.read_bytes() for name, path in files.items()} == made
    assert "s.h5 is damaged" in caplog.text


def test_header_check_of_patch_files(tmp_path):
    from musk.wsi.h5 import patch_file_problem

    good = write_patch_file(tmp_path / "good.h5", np.zeros((3, 2)), {"features": np.ones((3, 4))})
    assert patch_file_problem(good, ("features",)) is None
    assert patch_file_problem(tmp_path / "none.h5") == "missing"
    assert "no 'features' dataset" in patch_file_problem(write_patch_file(tmp_path / "c.h5", np.zeros((3, 2))),
                                                         ("features",))  # fmt: skip
    import h5py

    with h5py.File(tmp_path / "declared.h5", "w") as f:  # 16 MB declared, nothing stored
        f.create_dataset("coords", data=np.zeros((65536, 2), dtype=np.int64))
        f.create_dataset("features", shape=(65536, 64), dtype="f4")
    assert "'features' data is cut short" in patch_file_problem(tmp_path / "declared.h5", ("features",))
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f.create_dataset("coords", data=np.zeros((3, 2)))
        f.create_dataset("features", data=np.zeros((2, 4)))
    assert "rows do not match" in patch_file_problem(tmp_path / "rows.h5", ("features",))


# ---- 19.10: plain images: a pixel limit before decoding, decoded once -----------------------------------------
def test_plain_image_over_the_limit_is_refused_before_decoding(tmp_path, png_slide, slide, capsys):
    truncated = tmp_path / "big.png"  # the header of a 768 x 640 PNG, no pixel data: decoding it would fail
    truncated.write_bytes(png_slide.read_bytes()[:100])
    with pytest.raises(SlideError, match=r"768x640 = 491520 pixels, over the limit of 100000 .*--max_pixels"):
        open_slide(truncated, mpp=0.5, max_pixels=100_000)
    with open_slide(png_slide, mpp=0.5, max_pixels=491_520) as reader:  # at the limit: read
        assert reader.dimensions == (768, 640)
    job_dir = tmp_path / "job"
    args = ["wsi", "segment", "--slides", str(png_slide), str(slide), "--mpp", "0.5", "--job_dir", str(job_dir)]
    assert main([*args, "--max_pixels", "100000"]) == 1
    with open(job_dir / "status.csv", newline="") as f:
        rows = {row["slide"]: row for row in csv.DictReader(f)}
    assert rows["s"]["status"] == "done"  # a pyramid is read a region at a time: no limit
    assert rows["plain"]["status"] == "failed" and "over the limit of 100000" in rows["plain"]["error"]


def test_a_plain_image_is_decoded_once_for_every_worker(png_slide, weights, tmp_path, monkeypatch):
    decodes = tmp_path / "decodes.txt"
    load_image = readers_module.load_image

    def counting(path, **options):  # forked workers inherit it; each call appends a line
        with open(decodes, "a") as f:
            f.write(f"{path}\n")
        return load_image(path, **options)

    monkeypatch.setattr(readers_module, "load_image", counting)
    job = run_wsi_job([png_slide], tmp_path / "job", config(weights, mpp=0.5, num_workers=2, batch_size=4))
    assert job.failed == [] and int(job.records[0]["patches"]) > 8  # several batches, over two workers
    assert decodes.read_text().splitlines() == [str(png_slide)]


def test_shared_pixels_reach_spawned_workers_without_the_file(png_slide, tmp_path):
    copy = shutil.copy(png_slide, tmp_path / "plain.png")
    with open_slide(copy, mpp=0.5) as reader:
        tissue = segment_tissue(reader.thumbnail(256), reader.dimensions, reader.mpp)
        grid = plan_patches(reader, tissue, patch_size=128, magnification=20)
        want = [np.asarray(reader.read_region(tuple(xy), 0, (128, 128))) for xy in grid.coords[:3]]
        again = pickle.loads(pickle.dumps(reader))  # mapped again, not copied
        np.testing.assert_array_equal(np.asarray(again.read_region(tuple(grid.coords[0]), 0, (128, 128))), want[0])
        again.close()
        (tmp_path / "plain.png").unlink()  # the workers cannot decode it: they use the pixels decoded here
        grid.coords = grid.coords[:3]
        cfg = {"input_size": (3, 128, 128), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
               "interpolation": "bicubic"}  # fmt: skip
        dataset = SlidePatchDataset(reader, grid, PatchPreprocessing(cfg))
        loader = DataLoader(dataset, batch_size=3, num_workers=1, multiprocessing_context="spawn")
        (batch,) = list(loader)
    np.testing.assert_array_equal(batch.permute(0, 2, 3, 1).numpy(), np.stack(want))


# ---- 19.13 and 19.15: usage errors before any work -------------------------------------------------------------
def test_an_unwritable_job_dir_is_refused_before_any_work(slide, tmp_path, capsys):
    missing_weights = tmp_path / "nowhere.safetensors"  # were the model loaded first, this would be the error
    args = ["wsi", "extract", "--slides", str(slide), "--model", TINY, "--weights", str(missing_weights)]
    assert main([*args, "--job_dir", "/proc/musk-wsi-job"]) == 2
    err = one_line_error(capsys)
    assert "the job directory /proc/musk-wsi-job" in err and "cannot write in /proc" in err


def test_a_read_only_job_dir_is_refused(slide, tmp_path, capsys):
    read_only = tmp_path / "job"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        (read_only / "probe").touch()
    except PermissionError:
        pass
    else:
        read_only.chmod(0o755)
        pytest.skip("running as root: permissions do not stop writes")
    try:
        assert main(["wsi", "segment", "--slides", str(slide), "--job_dir", str(read_only)]) == 2
        assert f"the job directory {read_only}" in one_line_error(capsys)
    finally:
        read_only.chmod(0o755)


def test_a_mistyped_slide_folder_is_a_usage_error(tmp_path, capsys):
    job_dir = tmp_path / "job"
    assert main(["wsi", "segment", "--slides", str(tmp_path / "missing_folder"), "--job_dir", str(job_dir)]) == 2
    assert f"no slide folder or file at {tmp_path / 'missing_folder'}" in one_line_error(capsys)
    assert not job_dir.exists()


# ---- 19.16: progress in patches, a colour scale on heatmaps ------------------------------------------------------
def test_the_progress_bar_counts_patches(slide, weights, capsys):
    model = musk.load(TINY, str(weights), device="cpu").model
    with open_slide(slide) as reader:
        tissue = segment_tissue(reader.thumbnail(512), reader.dimensions, reader.mpp)
        grid = plan_patches(reader, tissue, patch_size=128, magnification=20)
    extract_slide_features(model, slide, grid, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert f"{len(grid.coords)}/{len(grid.coords)}" in err and "patch" in err and len(grid.coords) > 4


def test_heatmaps_carry_their_colour_scale(slide, weights, tokenizer_file, tmp_path):
    from musk.wsi.overlay import add_colour_scale

    plain = add_colour_scale(Image.new("RGB", (400, 300), (200, 200, 200)), (0.0, 1.0), label="tumor")
    pixels = np.asarray(plain).reshape(-1, 3)
    for value in (0.0, 1.0):  # both ends of the bar, blended on white as the map is blended on the slide
        colour = np.round((0.5 + 0.5 * np.array(colormaps["jet"](value)[:3])) * 255)
        assert (np.abs(pixels - colour).max(axis=1) <= 1).any()
    job_dir = tmp_path / "job"
    cfg = config(weights, classes=["tumor", "stroma"], tokenizer=str(tokenizer_file))
    assert run_wsi_job([slide], job_dir, cfg, ("heatmap",)).failed == []
    with (
        Image.open(job_dir / "heatmaps" / "s" / "00_tumor.png") as heatmap,
        Image.open(job_dir / "thumbnails" / "s.png") as thumbnail,
    ):
        assert heatmap.size == thumbnail.size
        changed = (np.asarray(heatmap.convert("RGB")) != np.asarray(thumbnail.convert("RGB"))).any(axis=2)
    height, width = changed.shape
    assert changed[height - 60 :, width - 60 :].any()  # the scale, in the corner (glass there)
    assert not changed[:100, :100].any()
