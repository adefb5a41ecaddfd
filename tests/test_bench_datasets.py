"""Every benchmark dataset loads from a generated miniature of its official (and upstream demo) layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bench_layouts as layouts
from musk.bench.data import DatasetLayoutError
from musk.bench.datasets import load_dataset, resolve_root
from musk.bench.datasets.bracs import crop_or_pad


def _labels_by_class(data):
    return {
        data.classes[label]: int(n) for label, n in enumerate(np.bincount(data.labels, minlength=len(data.classes)))
    }


def test_unitopatho_demo_and_official_layouts(tmp_path):
    layouts.unitopatho_demo(tmp_path)
    train = load_dataset("unitopatho", tmp_path, "train")  # found under unitopatho/unitopath-public
    assert len(train.images) == 12 and np.bincount(train.labels).tolist() == [2] * 6
    assert train.classes[0] == "Hyperplastic Polyp"
    assert train.images.key(0) == "800/HP/train0.png"
    everything = load_dataset("unitopatho_retrieval", tmp_path, "test")
    assert len(everything.images) == 24 and everything.classes == ["HP", "NORM", "TA.HG", "TA.LG", "TVA.HG", "TVA.LG"]
    official = layouts.unitopatho_official(tmp_path / "off")
    test = load_dataset("unitopatho", official, "test")
    assert [test.images.key(i) for i in range(2)] == ["800/HP/test-HP.png", "800/NORM/test-NORM.png"]
    assert test.labels.tolist() == list(range(6))


def test_skin_and_skin_tumor(tmp_path):
    layouts.skin(tmp_path)
    test = load_dataset("skin", tmp_path, "test")
    assert len(test.classes) == 16 and test.labels.tolist() == list(range(16))
    assert test.images.key(0).startswith("data/tiles/nontumor_skin_necrosis_necrosis/Test")
    val = load_dataset("skin", tmp_path, "val")
    assert all("Validation" in val.images.key(i) for i in range(len(val.images)))
    tumor = load_dataset("skin_tumor", tmp_path, "train")
    assert tumor.classes == layouts.SKIN_CLASSES[12:] and tumor.labels.tolist() == [0, 1, 2, 3]


def test_pannuke_demo_and_official(tmp_path):
    layouts.pannuke_demo(tmp_path)
    test = load_dataset("pannuke", tmp_path, "test")
    assert test.classes == ["benign", "malignant"] and test.labels.tolist() == [0, 0, 1, 1]
    base, labels = layouts.pannuke_official(tmp_path)
    train = load_dataset("pannuke", base, "train")
    assert train.labels.tolist() == labels[1] + labels[2]
    assert len(train.images) == 6 and train.images.load(4).size == (32, 32)
    assert load_dataset("pannuke", base, "test").labels.tolist() == labels[3]


def test_pathmmu_pairs(tmp_path):
    _, captions = layouts.pathmmu(tmp_path)
    data = load_dataset("pathmmu_retrieval", tmp_path, "test")
    assert data.captions == captions and data.caption_images.tolist() == list(range(9))
    assert data.images.key(3) == "WebPathology/images/webpathology_0.jpg"


@pytest.mark.parametrize("name", ["bookset_retrieval", "pubmedset_retrieval"])
def test_arch_sets(tmp_path, name):
    layouts.arch(tmp_path)
    data = load_dataset(name, tmp_path, "test")
    assert len(data.images) == 4 and data.captions.count("shared figure caption") == 2
    assert data.images.key(0).startswith(("books_set/", "pubmed_set/"))


def test_pcam_reads_h5(tmp_path):
    layouts.pcam(tmp_path)
    for split in ("train", "val", "test"):
        data = load_dataset("pcam", tmp_path, split)
        assert data.labels.tolist() == [0, 1, 0, 1]
        assert data.images.load(1).size == (96, 96)


def test_nct_crc_train_and_external_test(tmp_path):
    layouts.nct_crc(tmp_path)
    train, test = load_dataset("nct_crc", tmp_path, "train"), load_dataset("nct_crc", tmp_path, "test")
    assert train.labels.tolist() == test.labels.tolist() == list(range(9))
    assert test.images.key(8) == "CRC-VAL-HE-7K/TUM/TUM-AAAA.tif" and train.classes[-1].startswith("colorectal")


def test_sicap_xlsx(tmp_path):
    layouts.sicap(tmp_path)
    train = load_dataset("sicap", tmp_path, "train")
    assert train.labels.tolist() == [0, 1, 2, 3] * 2 and len(train.classes) == 4
    assert load_dataset("sicap", tmp_path, "test").images.key(0) == "images/16BTest_Block_Region_0.jpg"


def test_osteo_drops_mixed_tiles_and_splits_by_name(tmp_path):
    layouts.osteo(tmp_path)
    train, test = load_dataset("osteo", tmp_path, "train"), load_dataset("osteo", tmp_path, "test")
    assert len(train.images) + len(test.images) == 15  # 5 mixed tiles left out
    names = {train.images.key(i) for i in range(len(train.images))}
    assert not names & {test.images.key(i) for i in range(len(test.images))}
    assert set(train.labels) | set(test.labels) == {0, 1, 2}


def test_renalcell_lc25000_wsss4luad(tmp_path):
    layouts.renalcell(tmp_path)
    assert load_dataset("renalcell", tmp_path, "test").labels.tolist() == list(range(6))
    layouts.lc25000(tmp_path)
    train, test = load_dataset("lc25000", tmp_path, "train"), load_dataset("lc25000", tmp_path, "test")
    assert len(train.images) + len(test.images) == 30
    combined = np.concatenate([train.labels, test.labels])
    assert np.bincount(combined).tolist() == [6] * 5
    assert train.classes[2] == "lung adenocarcinoma"
    lung_scc = [i for i in range(len(test.images)) if "lung_scc" in test.images.key(i)]
    assert all(test.labels[i] == 4 for i in lung_scc)
    layouts.wsss4luad(tmp_path)
    w_train, w_test = load_dataset("wsss4luad", tmp_path, "train"), load_dataset("wsss4luad", tmp_path, "test")
    assert len(w_train.images) + len(w_test.images) == 12  # the 4 multi-label tiles are left out
    for data in (w_train, w_test):
        for i in range(len(data.images)):
            vector = data.images.key(i).split("-[")[1].rstrip("].png").split(", ")
            assert vector.index("1") == data.labels[i]


def test_bracs_groupings_official_and_demo(tmp_path):
    official = layouts.bracs_official(tmp_path)
    demo = layouts.bracs_demo(tmp_path)
    for root in (official, demo):
        assert load_dataset("bracs6cls", root, "test").labels.tolist() == [0, 0, 1, 2, 3, 4, 5]
        assert load_dataset("bracs3cls", root, "train").labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
        assert len(load_dataset("bracs_retrieval", root, "test").images) == 21
    assert load_dataset("bracs6cls", official, "val").images.load(0).size == (1792, 1792)


def test_bracs_crop_or_pad():
    from PIL import Image

    big = Image.new("RGB", (2000, 1900), (10, 20, 30))
    big.paste((200, 0, 0), (104, 54, 105, 55))  # the pixel that lands at (0, 0) of the centre crop
    cropped = crop_or_pad(big)
    assert cropped.size == (1792, 1792) and cropped.getpixel((0, 0)) == (200, 0, 0)
    padded = crop_or_pad(Image.new("RGB", (100, 50), (255, 255, 255)))
    assert padded.getpixel((0, 0)) == (0, 0, 0) and padded.getpixel((896, 896)) == (255, 255, 255)


def test_generic_folder_and_csv(tmp_path):
    for split in ("train", "test"):
        for c in ("benign", "tumor"):
            layouts.image(tmp_path / "tiles" / split / c / f"{split}.png")
    data = load_dataset("folder", tmp_path / "tiles", "train")
    assert data.classes == ["benign", "tumor"] and data.labels.tolist() == [0, 1] and data.name == "folder_tiles"
    assert len(load_dataset(f"folder:{tmp_path / 'tiles'}", "ignored", "test").images) == 2
    csv = tmp_path / "pairs.csv"
    layouts.image(tmp_path / "a.png"), layouts.image(tmp_path / "b.png")
    csv.write_text("path,caption\na.png,first caption\na.png,second caption\nb.png,third\n")
    pairs = load_dataset("csv", csv, "test")
    assert len(pairs.images) == 2 and pairs.caption_images.tolist() == [0, 0, 1]
    labelled = tmp_path / "labels.csv"
    labelled.write_text("image,label,split\na.png,tumor,train\nb.png,benign,test\na.png,benign,test\n")
    test = load_dataset("csv", labelled, "test")
    assert test.classes == ["benign", "tumor"] and test.labels.tolist() == [0, 0]


def test_csv_rows_without_a_label_or_an_image_are_named(tmp_path):
    layouts.image(tmp_path / "a.png"), layouts.image(tmp_path / "b.png")
    table = tmp_path / "labels.csv"
    table.write_text("image,label\na.png,tumor\n\nb.png,\na.png, \n")  # line 3 is blank
    with pytest.raises(DatasetLayoutError, match=r"labels\.csv has no 'label' on line\(s\) 4, 5; fill them in"):
        load_dataset("csv", table, "test")
    table.write_text("image,caption\na.png,a caption\n,another\n")
    with pytest.raises(DatasetLayoutError, match=r"no 'image' on line\(s\) 3;"):
        load_dataset("csv", table, "test")
    table.write_text("image,label\na.png,tumor\nb.png,NA\n")  # a class may be called NA
    assert load_dataset("csv", table, "test").classes == ["NA", "tumor"]


def test_custom_class_names_and_templates(tmp_path):
    layouts.pannuke_demo(tmp_path)
    names, templates = tmp_path / "names.json", tmp_path / "templates.json"
    names.write_text(json.dumps({"pannuke": ["non-neoplastic tissue", "carcinoma"]}))
    templates.write_text(json.dumps({"pannuke": ["an image of {c}."]}))
    data = load_dataset("pannuke", tmp_path, "test", names, templates)
    assert data.classes == ["non-neoplastic tissue", "carcinoma"] and data.templates == ["an image of {c}."]
    names.write_text(json.dumps({"pannuke": ["only one"]}))
    with pytest.raises(ValueError, match="2 classes, the file gives 1"):
        load_dataset("pannuke", tmp_path, "test", names)


def test_dataset_root_template_and_errors_name_the_expected_file(tmp_path):
    assert resolve_root("pannuke", tmp_path / "{dataset}") == tmp_path / "pannuke"
    (tmp_path / "pannuke").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"pannuke/PanNuke_all_binary\.csv"):
        load_dataset("pannuke", tmp_path, "test")
    with pytest.raises(DatasetLayoutError, match=r"camelyonpatch_level_2_split_test_x\.h5"):
        load_dataset("pcam", tmp_path, "test")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_dataset("skin", tmp_path / "missing", "test")
    (tmp_path / "skincancer" / "data").mkdir(parents=True)
    (tmp_path / "skincancer" / "data" / "tiles-v2.csv").write_text("file,class\nx.jpg,a\n")
    with pytest.raises(DatasetLayoutError, match=r"tiles-v2\.csv lacks the column\(s\) \['set', 'malignicy'\]"):
        load_dataset("skin", tmp_path, "test")
    with pytest.raises(ValueError, match="unknown dataset 'camelyon'"):
        load_dataset("camelyon", tmp_path, "test")
    with pytest.raises(ValueError, match="splits"):
        load_dataset("nct_crc", tmp_path, "val")
