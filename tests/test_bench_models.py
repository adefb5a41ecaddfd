"""Feature cache (reuse and invalidation) and the peer-model adapters (open_clip, timm) on real small models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bench_layouts as layouts
import musk
from musk.bench import BenchConfig, FeatureStore, load_adapter, load_dataset, parse_models, run_benchmark
from musk.bench.results import read_records
from musk.bench.runner import output_path
from weights_file import save_weights


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    model = musk.create_model("musk_tiny_patch16_64")
    save_weights(model, path)
    return path


@pytest.fixture()
def tiles(tmp_path):
    for split in ("train", "test"):
        for c in ("benign", "tumor"):
            for i in range(3):
                layouts.image(tmp_path / "tiles" / split / c / f"{i}.png")
    return tmp_path / "tiles"


def test_feature_cache_is_reused_and_invalidated_by_ms_aug_weights_and_files(tmp_path, tiles):
    weights_a = _checkpoint(tmp_path / "a.safetensors", 0)
    weights_b = _checkpoint(tmp_path / "b.safetensors", 1)
    data = load_dataset("folder", tiles, "train")
    cache = tmp_path / "cache"
    adapter = load_adapter("musk_tiny_patch16_64", str(weights_a))

    first = FeatureStore(cache)
    probe = first.image_features(adapter, data, "probe")
    assert first.extractions == 1 and len(list(cache.glob("*.npz"))) == 1
    # what was cached is the model's own normalised CLS feature
    model = musk.create_model("musk_tiny_patch16_64", pretrained=str(weights_a))
    transform = musk.get_transform(model)
    batch = torch.stack([transform(musk.load_image(p)) for p in data.images.paths])
    with torch.inference_mode():
        direct = model.encode_image(batch, with_head=False, normalize=True).numpy()
    np.testing.assert_allclose(probe, direct, atol=1e-5)

    second = FeatureStore(cache)  # a new process: served from disk
    np.testing.assert_array_equal(second.image_features(adapter, data, "probe"), probe)
    assert second.extractions == 0

    multiscale = second.image_features(adapter, data, "probe", ms_aug=True)
    assert second.extractions == 1 and multiscale.shape == (6, 128)
    other = FeatureStore(cache).image_features(load_adapter("musk_tiny_patch16_64", str(weights_b)), data, "probe")
    assert not np.allclose(other, probe)
    layouts.image(tiles / "train" / "tumor" / "new.png")
    grown = FeatureStore(cache)
    assert grown.image_features(adapter, load_dataset("folder", tiles, "train"), "probe").shape[0] == 7
    assert grown.extractions == 1
    assert len(list(cache.glob("*.npz"))) == 4

    for path in cache.glob("*.npz"):
        path.write_bytes(b"truncated")
    damaged = FeatureStore(cache)
    np.testing.assert_allclose(damaged.image_features(adapter, data, "probe"), probe, atol=1e-6)
    assert damaged.extractions == 1


def test_linear_probe_and_knn_over_seeds_and_shots_extract_once(tmp_path, tiles):
    weights = _checkpoint(tmp_path / "w.safetensors", 0)
    store_dir = tmp_path / "features"
    config = BenchConfig(
        models=[("musk_tiny_patch16_64", str(weights))],
        datasets=["folder"],
        dataset_root=str(tiles),
        task="linear_probe",
        fewshot_k=[1, 2, -1],
        seeds=[0, 1],
        output=str(tmp_path / "lp.json"),
        feature_root=str(store_dir),
        num_workers=0,
    )
    records = run_benchmark(config)
    assert len(records) == 6 and len(list(store_dir.glob("*.npz"))) == 2
    knn_records = run_benchmark(BenchConfig(**{**config.__dict__, "task": "knn", "output": str(tmp_path / "knn.json")}))
    assert {r["metrics"]["k"] for r in knn_records} == {2, 4, 6}  # k = 20 capped at the training set
    assert len(list(store_dir.glob("*.npz"))) == 2  # the same features served the kNN probe


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(params=["registered", "local-dir"])
def tiny_open_clip(request, tmp_path):
    """(open_clip name, pretrained file or "", the model) of a tiny random CLIP saved under ``tmp_path``: a config
    added to open_clip's registry (every open_clip), or a ``local-dir:`` folder (open_clip versions that have it)."""
    import open_clip

    if request.param == "local-dir":
        if not hasattr(open_clip.factory, "LOCAL_DIR_PREFIX"):
            pytest.skip(f"open_clip {open_clip.__version__} has no local-dir: models")
        folder = tmp_path / "clip"
        folder.mkdir()
        config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
        (folder / "open_clip_config.json").write_text(json.dumps(config))
        name, weights, pretrained = f"local-dir:{folder}", folder / "open_clip_pytorch_model.bin", ""
    else:
        (tmp_path / "musk-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(tmp_path / "musk-test-tiny-clip.json")
        name, weights = "musk-test-tiny-clip", tmp_path / "tiny-clip.bin"
        pretrained = str(weights)
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    torch.save(model.state_dict(), weights)
    return name, pretrained, model.eval()


def test_open_clip_adapter_zero_shot_equals_open_clip_itself(tmp_path, tiles, tiny_open_clip):
    import open_clip

    arch, pretrained, reference = tiny_open_clip
    records = run_benchmark(
        BenchConfig(
            models=[(f"open_clip:{arch}", pretrained)],
            datasets=["folder"],
            dataset_root=str(tiles),
            output=str(tmp_path / "zs.json"),
            num_workers=0,
        )
    )
    (record,) = records
    data = load_dataset("folder", tiles, "test")
    _, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
    tokenizer = open_clip.get_tokenizer(arch)
    with torch.inference_mode():
        images = torch.stack([preprocess(musk.load_image(p)) for p in data.images.paths])
        img = torch.nn.functional.normalize(reference.encode_image(images), dim=-1)
        classes = []
        for c in data.classes:
            prompts = [t.replace("{c}", c) for t in data.templates]
            mean = torch.nn.functional.normalize(reference.encode_text(tokenizer(prompts)), dim=-1).mean(0)
            classes.append(mean / mean.norm())
        predictions = (img @ torch.stack(classes).T).argmax(1).numpy()
    assert record["metrics"]["acc1"] == pytest.approx(np.mean(predictions == data.labels))


def test_timm_adapter_runs_the_image_tasks_and_refuses_text_tasks(tmp_path, tiles):
    import timm

    torch.manual_seed(0)
    encoder = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    save_weights(encoder, tmp_path / "vit.safetensors")
    model = ("timm:vit_tiny_patch16_224", str(tmp_path / "vit.safetensors"))
    adapter = load_adapter(*model)
    data = load_dataset("folder", tiles, "test")
    features = FeatureStore().image_features(adapter, data, "probe")
    config = timm.data.resolve_data_config({}, model=encoder)
    transform = timm.data.create_transform(**config)
    with torch.inference_mode():
        direct = encoder.eval()(torch.stack([transform(musk.load_image(p)) for p in data.images.paths]))
    np.testing.assert_allclose(features, torch.nn.functional.normalize(direct, dim=-1).numpy(), atol=1e-5)
    for task in ("image_retrieval", "knn", "linear_probe"):
        run_benchmark(
            BenchConfig(
                models=[model],
                datasets=["folder"],
                dataset_root=str(tiles),
                task=task,
                output=str(tmp_path / "timm.json"),
                num_workers=0,
            )
        )
    assert {r["task"] for r in read_records(tmp_path / "timm.json")} == {"image_retrieval", "knn", "linear_probe"}
    state = {**encoder.state_dict(), "blocks.0.ls1.gamma": torch.ones(8), "head.weight": torch.zeros(2, 8)}
    save_weights(state, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"blocks\.0\.ls1\.gamma"):  # the classifier head alone is fine
        load_adapter("timm:vit_tiny_patch16_224", str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no text encoder"):
        run_benchmark(
            BenchConfig(
                models=[model],
                datasets=["folder"],
                dataset_root=str(tiles),
                output=str(tmp_path / "zs.json"),
                num_workers=0,
            )
        )


def test_model_lists_and_output_placeholders(tmp_path):
    listing = tmp_path / "models.txt"
    listing.write_text("# the paper's comparison\nmusk_large_patch16_384,hf_hub:xiangjx/musk\n\ntimm:vit_small,timm\n")
    assert parse_models([str(listing), "open_clip:ViT-B-16,/w/quilt.pt"]) == [
        ("musk_large_patch16_384", "hf_hub:xiangjx/musk"),
        ("timm:vit_small", "timm"),
        ("open_clip:ViT-B-16", "/w/quilt.pt"),
    ]
    with pytest.raises(ValueError, match="unknown model 'conch'"):
        load_adapter("conch", "/mnt/conch.pt")
    path = output_path(
        "out/{model}_{pretrained}_{dataset}_{task}_{fewshot_k}_{seed}.json",
        "open_clip:hf-hub:a/b",
        "hf_hub:xiangjx/musk",
        "pannuke",
        "linear_probe",
        8,
        3,
    )
    assert str(path) == "out/open_clip_hf-hub_a_b_hf_hub_xiangjx_musk_pannuke_linear_probe_8_3.json"


def _tiny_hf_clip(folder):
    """A random transformers CLIPModel (width 32) with a character-level tokenizer, saved as a hub folder is."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    size = {"shortest_edge": 32}, {"height": 32, "width": 32}
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size=size[0], crop_size=size[1]),
        tokenizer=CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")),
    )
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**layers, "vocab_size": len(vocab), "max_position_embeddings": 32},
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def test_transformers_clip_adapter_equals_the_model_itself(tmp_path, tiles):
    pytest.importorskip("transformers", reason="the hf_clip adapter needs transformers (in the [dev] extra)")
    model, processor = _tiny_hf_clip(tmp_path / "hf")
    adapter = load_adapter(f"hf_clip:{tmp_path / 'hf'}", "")
    data = load_dataset("folder", tiles, "test")
    images = [musk.load_image(p) for p in data.images.paths[:3]]
    texts = ["a tumor", "normal tissue"]
    got_images = adapter.encode_images(torch.stack([adapter.transform(i) for i in images]), "proj")
    got_texts = adapter.encode_texts(texts)
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        ids = processor.tokenizer(texts, padding=True, return_tensors="pt")
        image_out, text_out = model.get_image_features(pixel_values=pixels), model.get_text_features(**ids)
    want_images, want_texts = (o if isinstance(o, torch.Tensor) else o.pooler_output for o in (image_out, text_out))
    torch.testing.assert_close(got_images, torch.nn.functional.normalize(want_images, dim=-1))
    torch.testing.assert_close(got_texts, torch.nn.functional.normalize(want_texts, dim=-1))
    assert got_images.shape == (3, 16) and adapter.identity()["model"] == f"hf_clip:{tmp_path / 'hf'}"


def test_folder_splits_share_one_class_list_and_probes_need_every_class_in_train(tmp_path):
    """A class missing from one split neither shifts the labels of the others nor breaks the metrics; a probe
    refuses to run without training images of every class."""
    root = tmp_path / "tiles"
    for split, classes in (("train", ("benign", "tumor")), ("test", ("adenoma", "benign", "tumor"))):
        for c in classes:
            for i in range(2):
                layouts.image(root / split / c / f"{i}.png")
    train, test = load_dataset("folder", root, "train"), load_dataset("folder", root, "test")
    assert train.classes == test.classes == ["adenoma", "benign", "tumor"]
    assert train.labels.tolist() == [1, 1, 2, 2] and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    config = BenchConfig(
        models=[("musk_tiny_patch16_64", "none")],
        datasets=["folder"],
        dataset_root=str(root),
        task="knn",
        output=str(tmp_path / "knn.json"),
        feature_root=None,
        num_workers=0,
    )
    with pytest.raises(ValueError, match=r"train split has no images of the class\(es\) \['adenoma'\]"):
        run_benchmark(config)

    # the other way round: a class absent from test is scored as a class without test images
    (root / "test" / "adenoma").rename(root / "train" / "adenoma")
    (metrics,) = [r["metrics"] for r in run_benchmark(config)]
    assert len(metrics["per_class_recall"]) == 3 and metrics["confusion_matrix"][0] == [0, 0, 0]
    assert sum(map(sum, metrics["confusion_matrix"])) == 4
    with pytest.raises(ValueError, match="knn_k"):
        run_benchmark(BenchConfig(**{**config.__dict__, "knn_k": 0}))


def test_unknown_peer_model_names_are_reported_with_how_to_list_them():
    with pytest.raises(ValueError, match=r"timm:nosuch: timm has no model 'nosuch'.*timm\.list_models\(\)"):
        load_adapter("timm:nosuch", "none")
    with pytest.raises(ValueError, match=r"Did you mean vit_base_patch16_224"):
        load_adapter("timm:vit_base_patch16_22", "none")
    with pytest.raises(ValueError, match=r"open_clip has no model 'nosuch'.*open_clip\.list_models\(\)"):
        load_adapter("open_clip:nosuch", "")
    with pytest.raises(ValueError, match=r"no pretrained tag or file 'nosuchtag'.*list_pretrained_tags_by_model"):
        load_adapter("open_clip:ViT-B-32", "nosuchtag")


def test_an_unusable_output_path_stops_the_run_before_any_evaluation(tmp_path):
    """Checked first: the dataset folder does not even exist, and no model is loaded."""
    config = BenchConfig(models=[("musk_tiny_patch16_64", "none")], datasets=["folder"],
                         dataset_root=str(tmp_path / "absent"), task="knn", output=str(tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match=r"--output .* is a folder; name a results file"):
        run_benchmark(config)
    (tmp_path / "notes.txt").write_text("not results\n")
    with pytest.raises(ValueError, match=r"notes\.txt, line 1: not JSON"):
        run_benchmark(BenchConfig(**{**config.__dict__, "output": str(tmp_path / "notes.txt")}))
    with pytest.raises(ValueError, match=r"notes\.txt is a file, not a folder"):
        run_benchmark(BenchConfig(**{**config.__dict__, "output": str(tmp_path / "notes.txt" / "r.json")}))
