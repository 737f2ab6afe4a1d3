"""minidiff.text: the word Tokenizer over the sprites' caption vocabulary and the tiny TextEncoder."""

import pytest
import torch

from minidiff.data import VOCABULARY, ProceduralSprites
from minidiff.text import PAD, UNK, TextEncoder, Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(VOCABULARY, max_length=16)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    torch.manual_seed(0)
    return TextEncoder(tokenizer.vocab_size, dim=32, depth=2, heads=4, max_length=16).eval()


# ----------------------------------------------------------------------------------------- Tokenizer
def test_special_ids_and_vocab_size(tokenizer):
    assert tokenizer.tokens[:2] == [PAD, UNK] and tokenizer.pad_id == 0 and tokenizer.unk_id == 1
    assert tokenizer.vocab_size == len(VOCABULARY) + 2
    assert tokenizer.ids["a"] == 2 + sorted(VOCABULARY).index("a")


def test_every_caption_round_trips_without_unknown_words(tokenizer):
    captions = ProceduralSprites(300, seed=3).captions
    ids = tokenizer.encode(captions)
    assert ids.dtype == torch.int64 and ids.shape == (300, 16)
    assert not (ids == tokenizer.unk_id).any()                       # the vocabulary covers the captions
    assert tokenizer.decode(ids) == captions


def test_lowercase_and_punctuation_are_normalised(tokenizer):
    a = tokenizer.encode("Red hero, with a SWORD!")
    b = tokenizer.encode("red hero with a sword")
    assert torch.equal(a, b)
    assert tokenizer.split("brown side-facing cat (facing left).") == ["brown", "side-facing", "cat", "facing", "left"]


def test_unknown_words_become_unk(tokenizer):
    ids = tokenizer.encode(["red dragon with a laser"])[0]
    assert ids[:5].tolist() == [tokenizer.ids["red"], 1, tokenizer.ids["with"], tokenizer.ids["a"], 1]
    assert tokenizer.decode(ids) == ["red <unk> with a <unk>"]


def test_padding_and_truncation_to_max_length():
    short = Tokenizer(VOCABULARY, max_length=4)
    ids = short.encode(["green slime", "blue side-facing hero facing left with a sword"])
    assert ids.shape == (2, 4)
    assert ids[0].tolist() == [short.ids["green"], short.ids["slime"], 0, 0]           # padded
    assert short.decode(ids)[1] == "blue side-facing hero facing"                      # truncated


def test_empty_prompt_is_all_padding(tokenizer):
    ids = tokenizer.encode(["", "  ,. !"])
    assert (ids == tokenizer.pad_id).all()
    assert not tokenizer.attention_mask(ids).any()
    assert tokenizer.attention_mask(tokenizer.encode("red apple"))[0].tolist() == [True, True] + [False] * 14
    assert tokenizer.decode(ids) == ["", ""]


def test_single_string_is_a_batch_of_one_and_call_is_encode(tokenizer):
    assert tokenizer.encode("red apple").shape == (1, 16)
    assert torch.equal(tokenizer("red apple"), tokenizer.encode(["red apple"]))


def test_bad_vocabularies_fail_loudly():
    with pytest.raises(ValueError, match="repeated"):
        Tokenizer(["red", "red"])
    with pytest.raises(ValueError, match="single lower-case words"):
        Tokenizer(["red", "Blue"])
    with pytest.raises(ValueError, match="single lower-case words"):
        Tokenizer(["red", PAD])
    with pytest.raises(ValueError, match="max_length"):
        Tokenizer(["red"], max_length=0)


def test_tokenizer_config_round_trip(tokenizer):
    again = Tokenizer.from_config(tokenizer.to_config())
    assert again.tokens == tokenizer.tokens and again.max_length == tokenizer.max_length


# --------------------------------------------------------------------------------------- TextEncoder
def test_encoder_output_shape(tokenizer, encoder):
    context = encoder(tokenizer.encode(["red apple", "", "blue ring spell"]))
    assert context.shape == (3, 16, 32) and torch.isfinite(context).all()


def test_default_parameter_count(tokenizer):
    assert sum(p.numel() for p in TextEncoder(tokenizer.vocab_size).parameters()) == 103_936


@torch.no_grad()
def test_changing_one_word_changes_the_encoding(tokenizer, encoder):
    red, blue = encoder(tokenizer.encode(["red ghost", "blue ghost"]))
    assert (red[0] - blue[0]).abs().max() > 1e-2                     # the changed word itself
    assert (red[1] - blue[1]).abs().max() > 1e-3                     # and, through attention, "ghost"
    assert (red[5] - blue[5]).abs().max() > 1e-4                     # and the pad tokens (they attend to words)


@torch.no_grad()
def test_a_prompt_encodes_the_same_whatever_the_batch(tokenizer, encoder):
    """Fixed-length padding: no prompt sees another prompt's length (what a padding mask would guard)."""
    alone = encoder(tokenizer.encode(["purple ghost"]))
    batched = encoder(tokenizer.encode(["brown side-facing cat facing left", "purple ghost", ""]))
    torch.testing.assert_close(batched[1:2], alone, rtol=0, atol=1e-6)


@torch.no_grad()
def test_padding_is_masked_out_of_the_word_encodings(tokenizer, encoder):
    """Pad tokens are no keys: word encodings depend neither on how much padding follows nor on <pad>'s vector."""
    ids = tokenizer.encode(["purple ghost", "blue side-facing hero facing left"])   # 2 and 5 words
    words = encoder.key_mask(ids)                                                   # (B, L)
    assert words.sum(1).tolist() == [2, 5]
    full, cut = encoder(ids), encoder(ids[:, :6])                                   # L = 16 and L = 6
    torch.testing.assert_close(cut[words[:, :6]], full[:, :6][words[:, :6]], rtol=0, atol=1e-5)
    other_pad = TextEncoder(**encoder.to_config()).eval()
    other_pad.load_state_dict(encoder.state_dict())
    other_pad.token_embedding.weight[tokenizer.pad_id] += 1.0                       # a different <pad> vector
    torch.testing.assert_close(other_pad(ids)[words], full[words], rtol=0, atol=1e-5)
    unmasked = TextEncoder(**{**encoder.to_config(), "mask_padding": False}).eval()
    unmasked.load_state_dict(encoder.state_dict())                                  # same weights, no mask
    assert (unmasked(ids)[0, :2] - unmasked(ids[:, :6])[0, :2]).abs().max() > 1e-4  # then padding leaks in


@torch.no_grad()
def test_empty_prompt_keeps_position_zero_as_its_key(tokenizer, encoder):
    ids = tokenizer.encode(["", "red apple"])
    assert encoder.key_mask(ids)[0].tolist() == [True] + [False] * 15               # never no key at all
    empty = encoder(ids)[0]
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(encoder(ids[:1, :1])[0, 0], empty[0], rtol=0, atol=1e-5)  # only position 0 is seen


def test_encoder_config_round_trip(encoder):
    config = encoder.to_config()
    assert config["mask_padding"] is True and TextEncoder(**config).to_config() == config


def test_encoder_is_deterministic_in_eval_and_trains(tokenizer, encoder):
    ids = tokenizer.encode(["green apple with a leaf"])
    assert torch.equal(encoder(ids), encoder(ids))
    model = TextEncoder(tokenizer.vocab_size, dim=16, depth=1, heads=2)
    model(ids).pow(2).mean().backward()
    grad = model.token_embedding.weight.grad
    used = set(ids[0].tolist())
    assert all(grad[k].abs().sum() > 0 for k in used)                 # words (and <pad>) in the prompt learn
    assert grad[tokenizer.ids["ghost"]].abs().sum() == 0             # absent words get no gradient


def test_encoder_rejects_bad_ids(encoder):
    with pytest.raises(ValueError, match="int64"):
        encoder(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="L <= 16"):
        encoder(torch.zeros(1, 17, dtype=torch.int64))
    with pytest.raises(ValueError, match="lie in"):
        encoder(torch.full((1, 4), 999, dtype=torch.int64))
