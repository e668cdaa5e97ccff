"""The synthetic shapes data set: determinism, split, coverage, tokenizers."""

import numpy as np

from pruning import tiny
from pruning.tiny import data, models


def test_render_is_deterministic_and_seed_dependent():
    p = "a yellow triangle at the bottom left on a gray background"
    a, b, c = data.render(p, seed=3), data.render(p, seed=3), data.render(p, seed=4)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    x1, _ = data.make_images(tiny.TRAIN_PROMPTS[:5], per_prompt=3, seed=1)
    x2, _ = data.make_images(tiny.TRAIN_PROMPTS[:5], per_prompt=3, seed=1)
    assert np.array_equal(x1, x2)


def test_split_is_fixed_disjoint_and_covers_attributes():
    held = tiny.heldout_prompts()
    assert len(held) >= 64 and len(set(held)) == len(held)
    assert not set(held) & set(tiny.train_prompts())
    assert held == tiny.heldout_prompts()  # fixed
    assert (
        len(tiny.SHAPES) >= 3
        and len(tiny.COLORS) >= 6
        and len(tiny.POSITIONS) >= 4
        and len(tiny.BACKGROUNDS) >= 2
    )
    train = [data.parse_caption(p) for p in tiny.train_prompts()]
    for p in held:  # every attribute pair of a held-out prompt was seen in training
        h = data.parse_caption(p)
        for a, b in [("color", "shape"), ("color", "position"), ("shape", "position")]:
            assert any(t[a] == h[a] and t[b] == h[b] for t in train), (p, a, b)


def test_caption_round_trip_and_errors():
    p = data.caption("cyan", "square", "bottom right", "black")
    assert p == "a cyan square at the bottom right on a black background"
    assert data.parse_caption(p)["position"] == "bottom right"
    try:
        data.parse_caption("a cat")
    except ValueError as e:
        assert "a cat" in str(e)
    else:
        raise AssertionError("no error")


def test_tokenizers_give_one_token_per_word():
    clip, t5 = models.clip_tokenizer(), models.t5_tokenizer()
    for w in data.WORDS:
        assert len(clip.tokenize(w)) == 1, w
        assert len(t5.tokenize(w)) == 1, w
    longest = max(tiny.ALL_PROMPTS, key=len)
    assert len(clip(longest).input_ids) <= clip.model_max_length
