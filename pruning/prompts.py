"""Default prompts, in one place: what methods calibrate on and what comparisons evaluate on.

On the bundled shapes models (and exports of them) both come from the shapes data set, kept
apart (calibration uses training captions, evaluation the held-out ones); on every other
model they come from a small fixed list of everyday captions, also kept apart.

>>> calibration_prompts("bundled:tiny-shapes-sd@abc", 2)  # spread over the training captions
('a red circle at the top left on a white background', 'a yellow circle at the top right on a black background')
>>> evaluation_prompts("hub:org/model@1", 1)
('a photo of a red sports car parked on a city street',)
"""

from __future__ import annotations

from .bundled import BUNDLED
from .tiny.data import heldout_prompts, train_prompts

_EVERYDAY = (
    "a photo of a red sports car parked on a city street",
    "a bowl of fresh fruit on a wooden kitchen table",
    "a golden retriever running across a green meadow",
    "a lighthouse on a rocky coast at sunset",
    "a cup of coffee next to an open book",
    "a snowy mountain range under a clear blue sky",
    "a cat sleeping on a windowsill in the afternoon sun",
    "a bicycle leaning against a brick wall",
    "an astronaut riding a horse on the moon, digital art",
    "a plate of pasta with tomato sauce and basil",
    "a small wooden cabin in a pine forest",
    "a portrait of an old man with a white beard",
    "a city skyline at night with reflections on the river",
    "a vase of sunflowers on a white table",
    "a sailing boat on a calm turquoise sea",
    "a red fox standing in the snow",
    # calibration (never used for evaluation)
    "a watercolor painting of a quiet village street",
    "a close-up photo of a hummingbird drinking from a flower",
    "a futuristic train crossing a desert bridge",
    "a stack of pancakes with berries and syrup",
    "a misty waterfall in a tropical forest",
    "a black and white photo of a jazz musician",
    "a colorful hot air balloon over green hills",
    "a modern living room with large windows",
)
_N_EVAL = 16


def is_shapes_model(model_ref: str) -> bool:
    """A bundled shapes model, or a model derived from one (an export's ``pruned:bundled:...`` ref)."""
    return any(f"bundled:{name}@" in model_ref for name in BUNDLED)


def _take(pool: tuple[str, ...], n: int) -> tuple[str, ...]:
    return tuple(pool[i % len(pool)] for i in range(n))


def _spread(pool: tuple[str, ...], n: int) -> tuple[str, ...]:
    """``n`` prompts spread evenly over ``pool`` (all of it, cycling, when ``n`` exceeds it).

    >>> _spread(tuple("abcdefgh"), 4)
    ('a', 'c', 'e', 'g')
    """
    if n > len(pool):
        return _take(pool, n)
    return tuple(pool[i * len(pool) // n] for i in range(n))


def calibration_prompts(model_ref: str, n: int = 8) -> tuple[str, ...]:
    """``n`` prompts for a method to score with (disjoint from the evaluation prompts). On the
    shapes models they are spread over the training captions, which are sorted by colour and
    shape: the first 32 are all red circles, and a reconstruction fitted on them made held-out
    captions worse (Taylor 20% on tiny-shapes-sd: 1.6x the plain latent MSE)."""
    if is_shapes_model(model_ref):
        return _spread(tuple(train_prompts()), n)
    return _take(_EVERYDAY[_N_EVAL:], n)


def evaluation_prompts(model_ref: str, n: int = 16) -> tuple[str, ...]:
    """``n`` prompts to compare models on (the held-out captions on the shapes models)."""
    if is_shapes_model(model_ref):
        return _take(tuple(heldout_prompts()), n)
    return _take(_EVERYDAY[:_N_EVAL], n)
