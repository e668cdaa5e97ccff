"""The rule-based shapes evaluator and the distance helpers."""

import numpy as np
import pytest
import torch

from pruning import quality, tiny


@pytest.fixture(scope="module")
def ground_truth():
    return tiny.make_images(tiny.ALL_PROMPTS, per_prompt=1, seed=11)


def test_ground_truth_scores_high(ground_truth):
    images, prompts = ground_truth
    r = quality.shape_task_accuracy(images, prompts)
    for k in ("color", "shape", "position", "background"):
        assert r[k] >= 0.98, (k, r[k])
    assert len(r["per_image"]) == len(prompts) and r["per_image"]["all_ok"].all()
    # PIL images and float tensors are read the same way
    from PIL import Image

    t = torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float() / 255
    assert quality.shape_task_accuracy(t, prompts[:4])["all"] == 1.0
    assert quality.shape_task_accuracy([Image.fromarray(i) for i in images[:4]], prompts[:4])["all"] == 1.0


def test_failures_score_low(ground_truth):
    images, prompts = ground_truth
    n = 64
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    blank = np.stack([np.full((64, 64, 3), c, np.uint8) for c in (245, 15, 128, 200)] * (n // 4))
    smooth = np.clip(rng.normal(128, 40, (n, 8, 8, 3)), 0, 255).astype(np.uint8).repeat(8, 1).repeat(8, 2)
    for bad in (noise, blank, smooth):
        r = quality.shape_task_accuracy(bad, prompts[:n])
        assert r["all"] <= 0.05 and r["color"] <= 0.1 and r["shape"] <= 0.1, r
    # wrong color: the same image judged against a prompt with another color
    names = list(tiny.COLORS)
    wrong = [
        p.replace(f"a {c} ", f"a {names[(names.index(c) + 1) % len(names)]} ", 1)
        for p in prompts[:n]
        for c in [tiny.parse_caption(p)["color"]]
    ]
    r = quality.shape_task_accuracy(images[:n], wrong)
    assert r["color"] == 0.0 and r["all"] == 0.0 and r["shape"] >= 0.98


def test_wrong_shape_and_position_are_caught():
    p = "a green square at the top right on a white background"
    img = tiny.render(p, seed=2)
    assert quality.shape_task_accuracy([img], [p.replace("square", "circle")])["shape"] == 0.0
    assert quality.shape_task_accuracy([img], [p.replace("top right", "bottom left")])["position"] == 0.0


def test_distances():
    a = torch.zeros(2, 4, 8, 8)
    assert quality.latent_mse(a, a) == 0.0
    assert quality.latent_mse(a, a + 2) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        quality.latent_mse(a, torch.zeros(2, 4, 4, 4))
    x = np.zeros((2, 8, 8, 3), np.uint8)
    assert quality.psnr(x, x) == 100.0
    y = x.copy()
    y[..., 0] = 255
    assert quality.psnr(x, y) == pytest.approx(10 * np.log10(3), abs=1e-6)
    with pytest.raises(ValueError):
        quality.shape_task_accuracy(x, ["a red circle at the top left on a white background"])
