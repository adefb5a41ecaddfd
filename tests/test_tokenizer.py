"""musk.tokenizer: ids identical to upstream MUSK (XLMRobertaTokenizer on tokenizer.spm + xlm_tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_path
from musk.models import WeightsUnavailableError
from musk.tokenizer import MuskTokenizer, get_tokenizer, tokenize_for_musk


@pytest.fixture(scope="module")
def tok(tokenizer_file: Path) -> MuskTokenizer:
    return MuskTokenizer(tokenizer_file)


@pytest.fixture(scope="module")
def goldens() -> tuple[list[str], np.ndarray, np.ndarray]:
    manifest = json.loads(shared_path("reference", "goldens_seed0.json").read_text())
    assert manifest["max_len"] == 100
    arrays = np.load(shared_path("reference", "goldens_seed0.npz"))
    return manifest["sentences"], arrays["text_ids"], arrays["text_padding_mask"]


def test_special_ids_and_vocabulary(tok: MuskTokenizer) -> None:
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == 64001
    assert tok.vocab_size == 64002
    assert sorted(tok.all_special_ids) == [0, 1, 2, 3, 64001]


def test_goldens_via_tokenize_for_musk(tok, goldens) -> None:
    sentences, ids, mask = goldens
    for i, text in enumerate(sentences):
        got_ids, got_mask = tokenize_for_musk(text, tok, max_len=100)
        assert got_ids == ids[i].tolist(), f"sentence {i}: {text!r}"
        assert got_mask == mask[i].tolist(), f"sentence {i}: {text!r}"


def test_goldens_via_call_max_length(tok, goldens) -> None:
    sentences, ids, mask = goldens
    got_ids, got_mask = tok(sentences, max_length=100, padding="max_length")
    assert got_ids.dtype == torch.long and got_mask.dtype == torch.long
    np.testing.assert_array_equal(got_ids.numpy(), ids)
    np.testing.assert_array_equal(got_mask.numpy(), mask)


def test_longest_padding_is_a_slice_of_max_length(tok, goldens) -> None:
    sentences = goldens[0][:3]  # short sentences, of different lengths
    lengths = [len(tok.encode(s)) for s in sentences]
    assert len(set(lengths)) > 1
    ids, mask = tok(sentences, max_length=100)
    full_ids, full_mask = tok(sentences, max_length=100, padding="max_length")
    assert ids.shape == (3, max(lengths))
    assert torch.equal(ids, full_ids[:, : max(lengths)])
    assert torch.equal(mask, full_mask[:, : max(lengths)])
    assert (full_mask[:, max(lengths) :] == 1).all() and (full_ids[:, max(lengths) :] == 1).all()
    assert mask.sum(1).tolist() == [max(lengths) - n for n in lengths]


def test_longest_padding_is_capped_at_max_length(tok, goldens) -> None:
    long_text = goldens[0][7]
    assert len(tok.encode(long_text)) > 100
    ids, mask = tok([long_text, "tumour"], max_length=100)
    assert ids.shape == mask.shape == (2, 100)


def test_truncation_keeps_eos_last(tok) -> None:
    text = "tumour " * 50
    full = tok.encode(text)
    assert len(full) == 52 and full[0] == 0 and full[-1] == 2
    ids, mask = tokenize_for_musk(text, tok, max_len=10)
    assert ids == [0, *full[1:9], 2]
    assert mask == [0] * 10
    batch_ids, batch_mask = tok(text, max_length=10)
    assert batch_ids.tolist() == [ids] and batch_mask.tolist() == [mask]
    assert tokenize_for_musk(text, tok, max_len=2) == ([0, 2], [0, 0])


def test_empty_and_blank_text(tok) -> None:
    assert tok.encode("") == [0, 2]
    assert tok.encode(" \t\n ") == [0, 2]
    ids, mask = tok("")
    assert ids.tolist() == [[0, 2]] and mask.tolist() == [[0, 0]]
    assert tokenize_for_musk("", tok, max_len=4) == ([0, 2, 1, 1], [0, 0, 1, 1])


# Expected ids verified against transformers 4.x XLMRobertaTokenizer("tokenizer.spm").encode (4.57.6 and
# 4.44.2). Before 4.34 a directly constructed XLMRobertaTokenizer did not split on these literals.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello<mask>world", [0, 12773, 64001, 218, 2]),
        ("hello <mask> world", [0, 12773, 64001, 218, 2]),
        ("a <s> b", [0, 10, 0, 2972, 2]),
        ("a</s>b", [0, 10, 2, 2972, 2]),
        ("a <pad> b", [0, 10, 1, 2972, 2]),
        (" <unk> x", [0, 3, 3377, 2]),
        ("<<s>>", [0, 6586, 0, 6399, 2]),
        ("<mask><mask>", [0, 64001, 64001, 2]),
        # <mask> strips the whitespace on its left (here NEL, which sentencepiece alone maps to <unk>) ...
        ("a\x85<mask>", [0, 10, 64001, 2]),
        # ... the other special tokens do not.
        ("a\x85<s>", [0, 10, 3, 0, 2]),
        # look-alikes are ordinary text
        ("\uff1cs\uff1e", [0, 6586, 11, 6673, 2]),
        ("<S>", [0, 6586, 143, 6673, 2]),
        # a character outside the sentencepiece vocabulary maps to <unk> (3)
        ("lung \U0001f600 tissue", [0, 9242, 190, 62892, 7633, 2]),
    ],
)
def test_encode_matches_transformers(tok, text: str, expected: list[int]) -> None:
    assert tok.encode(text) == expected


def test_decode_skips_special_tokens(tok, goldens) -> None:
    sentence = goldens[0][0]
    ids, _ = tokenize_for_musk(sentence, tok, max_len=20)
    assert tok.decode(ids) == sentence
    assert tok.decode(torch.tensor(tok.encode("hello <mask> world"))) == "hello world"
    with pytest.raises(ValueError, match="64002"):
        tok.decode([0, 64002, 2])


class _DuckTokenizer:
    """Any object with encode() and the three special ids (as a transformers tokenizer has)."""

    bos_token_id, eos_token_id, pad_token_id = 100, 200, 7

    def encode(self, text: str) -> list[int]:
        return [-1, *(ord(c) for c in text), -2]


def test_tokenize_for_musk_with_duck_typed_tokenizer() -> None:
    duck = _DuckTokenizer()
    assert tokenize_for_musk("abc", duck, max_len=6) == ([100, 97, 98, 99, 200, 7], [0, 0, 0, 0, 0, 1])
    assert tokenize_for_musk("abcdef", duck, max_len=5) == ([100, 97, 98, 99, 200], [0, 0, 0, 0, 0])


@pytest.mark.parametrize("bad", [0, 1, -3])
def test_max_length_below_two_is_rejected(tok, bad: int) -> None:
    with pytest.raises(ValueError, match="max_length"):
        tok("x", max_length=bad)
    with pytest.raises(ValueError, match="max_length"):
        tokenize_for_musk("x", tok, max_len=bad)


def test_bad_arguments(tok) -> None:
    with pytest.raises(ValueError, match="padding"):
        tok("x", padding="do_not_pad")
    with pytest.raises(ValueError, match="empty"):
        tok([])
    with pytest.raises(TypeError, match=r"texts\[1\].*int"):
        tok(["ok", 5])
    with pytest.raises(TypeError, match="bytes"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="int"):
        tok(3)


def test_get_tokenizer_local_path(tokenizer_file: Path) -> None:
    loaded = get_tokenizer(tokenizer_file)
    assert isinstance(loaded, MuskTokenizer)
    assert loaded.encode("a <s> b") == [0, 10, 0, 2972, 2]
    assert get_tokenizer(str(tokenizer_file)).vocab_size == 64002


def test_get_tokenizer_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "tokenizer.spm"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_tokenizer(missing)


def test_a_file_that_is_not_a_sentencepiece_model_is_named(tmp_path: Path) -> None:
    not_spm = tmp_path / "weights.safetensors"
    not_spm.write_bytes(b"\x08" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=f"{not_spm} is not a sentencepiece model"):
        get_tokenizer(not_spm)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MuskTokenizer(tmp_path / "nowhere.spm")


def test_get_tokenizer_from_hub(monkeypatch, tokenizer_file: Path, tmp_path: Path) -> None:
    calls = []

    def fake_download(repo_id: str, filename: str, cache_dir=None, alternative=None) -> Path:
        calls.append((repo_id, filename, cache_dir))
        return tokenizer_file

    monkeypatch.setattr("musk.tokenizer.download_from_hub", fake_download)
    loaded = get_tokenizer(cache_dir=tmp_path)
    assert calls == [("xiangjx/musk", "tokenizer.spm", tmp_path)]
    assert loaded.encode("hello<mask>world") == [0, 12773, 64001, 218, 2]


def test_get_tokenizer_hub_failure_propagates(monkeypatch) -> None:
    def failing_download(repo_id: str, filename: str, cache_dir=None, alternative=None) -> Path:
        raise WeightsUnavailableError(f"Cannot get {filename} of {repo_id}: log in")

    monkeypatch.setattr("musk.tokenizer.download_from_hub", failing_download)
    with pytest.raises(WeightsUnavailableError, match="tokenizer.spm of xiangjx/musk"):
        get_tokenizer()
