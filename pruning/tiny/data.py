"""The synthetic "shapes" data set: one colored shape on a plain background, with a caption.

Every image is 64x64 RGB and shows one shape (circle, square, triangle) in one of six colors, at
one of five positions (four quadrants and the center), on one of three backgrounds. That makes
3 * 6 * 5 * 3 = 270 captions. A fixed, seeded split holds 64 of them out (every held-out
caption's color/shape, color/position and shape/position pairs also occur in training), so the
held-out accuracy measures composition, not memorization. Size and position are jittered per
image (seeded), and shapes are drawn at 4x and box-filtered down (anti-aliased edges).

>>> len(ALL_PROMPTS), len(TRAIN_PROMPTS), len(HELDOUT_PROMPTS)
(270, 206, 64)
>>> set(TRAIN_PROMPTS) & set(HELDOUT_PROMPTS)
set()
>>> HELDOUT_PROMPTS[0]
'a cyan circle at the top left on a white background'
>>> parse_caption("a red circle at the top left on a white background")
{'color': 'red', 'shape': 'circle', 'position': 'top left', 'background': 'white'}
>>> render("a blue square in the center on a black background", seed=0).shape
(64, 64, 3)
>>> imgs, caps = make_images(TRAIN_PROMPTS[:2], per_prompt=2, seed=0)
>>> imgs.shape, imgs.dtype, caps[0] == caps[1] == TRAIN_PROMPTS[0]
((4, 64, 64, 3), dtype('uint8'), True)
"""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 64
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 30),
    "purple": (145, 55, 195),
    "cyan": (40, 205, 215),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle")
# position name -> (x, y) center of the shape in pixels of a 64x64 image
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (17, 17),
    "top right": (47, 17),
    "bottom left": (17, 47),
    "bottom right": (47, 47),
    "center": (32, 32),
}
WORDS = sorted(
    set(" ".join(list(COLORS) + list(SHAPES) + list(POSITIONS) + list(BACKGROUNDS)).split())
    | {"a", "at", "in", "the", "on", "background"}
)
SPLIT_SEED = 1234
N_HELDOUT = 64
_CAPTION = re.compile(r"^a (\w+) (\w+) (?:at the|in the) (.+?) on a (\w+) background$")


def caption(color: str, shape: str, position: str, background: str) -> str:
    """The caption of one combination.

    >>> caption("red", "circle", "center", "white")
    'a red circle in the center on a white background'
    """
    where = "in the center" if position == "center" else f"at the {position}"
    return f"a {color} {shape} {where} on a {background} background"


def parse_caption(text: str) -> dict[str, str]:
    """Split a caption into its attributes; raises ValueError for text that is not one."""
    m = _CAPTION.match(text.strip().lower())
    if not m or m[1] not in COLORS or m[2] not in SHAPES or m[3] not in POSITIONS or m[4] not in BACKGROUNDS:
        raise ValueError(f"not a shapes caption: {text!r}")
    return {"color": m[1], "shape": m[2], "position": m[3], "background": m[4]}


def _split() -> tuple[list[str], list[str]]:
    combos = list(itertools.product(COLORS, SHAPES, POSITIONS, BACKGROUNDS))
    rng = random.Random(SPLIT_SEED)
    order = rng.sample(range(len(combos)), len(combos))
    held: list[tuple] = []
    for i in order:  # greedy: hold a combo out only if its attribute pairs stay in training
        if len(held) == N_HELDOUT:
            break
        trial = set(held) | {combos[i]}
        rest = [c for c in combos if c not in trial]
        pairs = {(a, b, c[a], c[b]) for c in rest for a, b in itertools.combinations(range(4), 2)}
        if all((a, b, combos[i][a], combos[i][b]) in pairs for a, b in itertools.combinations(range(4), 2)):
            held.append(combos[i])
    train = [caption(*c) for c in combos if c not in set(held)]
    return train, [caption(*c) for c in held]


TRAIN_PROMPTS, HELDOUT_PROMPTS = _split()
ALL_PROMPTS = TRAIN_PROMPTS + HELDOUT_PROMPTS


def heldout_prompts() -> list[str]:
    """The fixed held-out prompts (never seen in training), a copy.

    >>> len(heldout_prompts())
    64
    """
    return list(HELDOUT_PROMPTS)


def train_prompts() -> list[str]:
    """The fixed training prompts, a copy."""
    return list(TRAIN_PROMPTS)


def render(text: str, seed: int = 0) -> np.ndarray:
    """Draw the image for a caption, uint8 (64, 64, 3); `seed` jitters size and position."""
    attrs = parse_caption(text)
    rng = random.Random(seed)
    s = 4  # supersampling factor
    img = Image.new("RGB", (RESOLUTION * s, RESOLUTION * s), BACKGROUNDS[attrs["background"]])
    draw = ImageDraw.Draw(img)
    cx, cy = POSITIONS[attrs["position"]]
    cx, cy = cx + rng.uniform(-2.5, 2.5), cy + rng.uniform(-2.5, 2.5)
    fill = COLORS[attrs["color"]]
    if attrs["shape"] == "circle":
        r = rng.uniform(10.5, 13.0)
        draw.ellipse([s * (cx - r), s * (cy - r), s * (cx + r), s * (cy + r)], fill=fill)
    elif attrs["shape"] == "square":
        h = rng.uniform(9.0, 11.5)
        draw.rectangle([s * (cx - h), s * (cy - h), s * (cx + h), s * (cy + h)], fill=fill)
    else:  # upward triangle whose bounding box is centered on (cx, cy)
        h = rng.uniform(11.0, 13.5)
        draw.polygon(
            [(s * cx, s * (cy - h)), (s * (cx + h), s * (cy + h)), (s * (cx - h), s * (cy + h))], fill=fill
        )
    img = img.resize((RESOLUTION, RESOLUTION), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def make_images(prompts: list[str], per_prompt: int = 1, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Render `per_prompt` jittered images of each prompt: (uint8 (N, 64, 64, 3), captions)."""
    images, captions = [], []
    for i, p in enumerate(prompts):
        for j in range(per_prompt):
            images.append(render(p, seed=seed * 1_000_003 + i * 1009 + j))
            captions.append(p)
    return np.stack(images), captions
