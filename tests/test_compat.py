"""Upstream compatibility: the MUSK README snippet, run as written in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import shared_path
from musk import utils

# The upstream README's code (only the paths and the device are ours; the tokenizer is ours, called
# through the same utils.xlm_tokenizer procedure).
README_SNIPPET = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from timm.data.constants import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
    from timm.models import create_model
    from musk import utils, modeling
    import musk

    ckpt, image_path, tokenizer_path, out = sys.argv[1:5]
    DEVICE = "cpu"

    model = create_model("musk_large_patch16_384", vocab_size=64010).eval()
    utils.load_model_and_may_interpolate(ckpt, model, 'model|module', '')
    model.to(DEVICE, dtype=torch.float32)
    model.eval()

    transform = torchvision.transforms.Compose([
        torchvision.transforms.Resize(384, interpolation=3, antialias=True),
        torchvision.transforms.CenterCrop((384, 384)),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD),
    ])
    img = Image.open(image_path).convert("RGB")
    img_tensor = transform(img).unsqueeze(0)
    with torch.inference_mode():
        image_embeddings = model(
            image=img_tensor.to(DEVICE, dtype=torch.float32),
            with_head=True,
            out_norm=True,
        )[0]  # return (vision_cls, text_cls)

    tokenizer = musk.get_tokenizer(tokenizer_path)
    text = ['histopathology image of lung adenocarcinoma']
    txt_ids = []
    pads = []
    for txt in text:
        txt_id, pad = utils.xlm_tokenizer(txt, tokenizer, max_len=100)
        txt_ids.append(torch.tensor(txt_id).unsqueeze(0))
        pads.append(torch.tensor(pad).unsqueeze(0))
    txt_ids = torch.cat(txt_ids)
    pads = torch.cat(pads)
    with torch.inference_mode():
        text_embeddings = model(
            text_description=txt_ids.to(DEVICE),
            padding_mask=pads.to(DEVICE),
            with_head=True,
            out_norm=True,
        )[1]  # return (vision_cls, text_cls)

    np.savez(out, image=image_embeddings.numpy(), text=text_embeddings.numpy(), ids=txt_ids.numpy())
    """
)


@pytest.mark.large
def test_upstream_readme_snippet_on_a_local_checkpoint(tmp_path, large_random_state, tokenizer_file, demo_image):
    """The snippet loads a .pth wrapped under 'model' and reproduces upstream's outputs (goldens)."""
    goldens = np.load(shared_path("reference", "goldens_seed0.npz"))
    sentences = json.loads(shared_path("reference", "goldens_seed0.json").read_text())["sentences"]
    assert sentences[0] == "histopathology image of lung adenocarcinoma"
    ckpt = tmp_path / "musk.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in large_random_state.items()}}, ckpt)
    out = tmp_path / "out.npz"
    args = [ckpt, demo_image, tokenizer_file, out]
    proc = subprocess.run([sys.executable, "-c", README_SNIPPET, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = np.load(out)
    np.testing.assert_array_equal(result["ids"][0], goldens["text_ids"][0])
    image_ref = goldens["large/image/global=1,head=1,norm=1,ms_aug=0"][:1]
    text_ref = goldens["large/text/global=1,head=1,norm=1"][:1]
    np.testing.assert_allclose(result["image"], image_ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(result["text"], text_ref, atol=1e-4, rtol=0)


def test_load_model_and_may_interpolate_honours_key_and_prefix(tmp_path):
    """Upstream's (model_key, model_prefix) arguments: a checkpoint under 'ema' with a 'backbone.' prefix."""
    import timm

    source = timm.create_model("musk_tiny_patch16_64")
    torch.save({"ema": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "c.pth")
    target = timm.create_model("musk_tiny_patch16_64")
    utils.load_model_and_may_interpolate(str(tmp_path / "c.pth"), target, "model|ema", "backbone.")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
