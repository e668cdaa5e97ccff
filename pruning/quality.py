"""Quality measures: latent/image distances, and task accuracy on the bundled shapes models.

The task evaluator is rule based and reads only pixels. Background = per-channel median of
the 2-pixel border (which must be mostly uniform); foreground = pixels farther than 80 (0-255
RGB distance) from it, reduced to its largest 4-connected component. An image with no
plausible object (too small, too large, scattered, or a non-uniform border) fails every
attribute. Otherwise: color = nearest palette color of the component's core pixels (and it
must be close to it), shape = fill ratio of the bounding box (square ~1, circle ~0.79,
triangle ~0.5; with the top-vs-bottom width as a tie-breaker), position = centroid region.

>>> from pruning.tiny.data import render
>>> p = "a red circle at the top left on a white background"
>>> r = shape_task_accuracy([render(p, seed=1)], [p])
>>> r["color"], r["shape"], r["position"], r["all"]
(1.0, 1.0, 1.0, 1.0)
>>> shape_task_accuracy([np.full((64, 64, 3), 245, np.uint8)], [p])["all"]
0.0
>>> round(psnr([render(p)], [render(p)]), 1), latent_mse(torch.zeros(2, 4), torch.ones(2, 4))
(100.0, 1.0)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .sampling import decode_latents, generate_latents
from .tiny.data import BACKGROUNDS, COLORS, parse_caption

FG_DIST = 80.0  # RGB distance from the background that makes a pixel foreground
MIN_AREA, MAX_AREA = 60, 1600  # pixels of the object component (the data set's shapes: ~200-700)
MAX_COLOR_DIST = 90.0
CENTER_RADIUS = 10.0
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_COLOR_NAMES = list(COLORS)


def to_uint8(images) -> np.ndarray:
    """PIL images, uint8/float arrays (HWC, values in [0, 1] for floats) or a (B, 3, H, W) tensor
    in [0, 1] -> uint8 (B, H, W, 3).

    >>> to_uint8(torch.ones(1, 3, 2, 2)).tolist()[0][0][0]
    [255, 255, 255]
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for im in images:
        a = np.asarray(im)
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
        out.append(a[..., :3])
    return np.stack(out)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a boolean mask (union-find over runs, no scipy)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    parent = [0]

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for y in range(h):
        row = mask[y]
        x = 0
        while x < w:
            if not row[x]:
                x += 1
                continue
            x1 = x
            while x1 < w and row[x1]:
                x1 += 1
            lab = len(parent)
            parent.append(lab)
            labels[y, x:x1] = lab
            if y:
                for other in np.unique(labels[y - 1, x:x1]):
                    if other:
                        ra, rb = find(int(other)), find(lab)
                        if ra != rb:
                            parent[max(ra, rb)] = min(ra, rb)
            x = x1
    if len(parent) == 1:
        return np.zeros_like(mask)
    roots = np.array([find(i) for i in range(len(parent))])
    flat = roots[labels]
    counts = np.bincount(flat[mask], minlength=len(parent))
    return flat == counts.argmax()


def describe(image) -> dict:
    """What the evaluator sees in one image: color, shape, position, background (None = not found).

    >>> from pruning.tiny.data import render
    >>> describe(render("a blue triangle at the bottom right on a black background"))["shape"]
    'triangle'
    """
    a = to_uint8([image])[0].astype(np.float32)
    h, w, _ = a.shape
    border = np.concatenate(
        [a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3), a[:, -2:].reshape(-1, 3)]
    )
    bg = np.median(border, axis=0)
    out = {"color": None, "shape": None, "position": None, "background": None, "area": 0}
    if np.mean(np.linalg.norm(border - bg, axis=1) < FG_DIST / 2) < 0.75:
        return out  # no uniform background (noise, clutter)
    bgs = np.array(list(BACKGROUNDS.values()), np.float32)
    d_bg = np.linalg.norm(bgs - bg, axis=1)
    if d_bg.min() < 60:
        out["background"] = list(BACKGROUNDS)[int(d_bg.argmin())]
    dist = np.linalg.norm(a - bg, axis=2)
    fg = dist > FG_DIST
    total = int(fg.sum())
    scale = (h * w) / 4096.0
    if total < MIN_AREA * scale or total > MAX_AREA * 2 * scale:
        return out
    comp = _largest_component(fg)
    area = int(comp.sum())
    out["area"] = area
    if area < MIN_AREA * scale or area > MAX_AREA * scale or area < 0.8 * total:
        return out  # nothing, something huge, or scattered blobs
    ys, xs = np.nonzero(comp)
    core = comp & (dist >= np.percentile(dist[comp], 50))
    mean = a[core].mean(axis=0)
    d = np.linalg.norm(_PALETTE - mean, axis=1)
    if d.min() <= MAX_COLOR_DIST:
        out["color"] = _COLOR_NAMES[int(d.argmin())]
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bh, bw = y1 - y0, x1 - x0
    fill = area / float(bh * bw)
    q = max(1, bh // 4)
    top = comp[y0 : y0 + q].sum(axis=1).mean()
    bottom = comp[y1 - q : y1].sum(axis=1).mean()
    aspect = bw / bh
    if 0.6 <= aspect <= 1.6:
        if fill > 0.89:
            out["shape"] = "square"
        elif fill < 0.64 and top < 0.6 * bottom:
            out["shape"] = "triangle"
        elif fill >= 0.64 and abs(top - bottom) < 0.35 * max(top, bottom):
            out["shape"] = "circle"
        elif fill < 0.72 and top < 0.6 * bottom:
            out["shape"] = "triangle"
    cx, cy = xs.mean() * 64.0 / w, ys.mean() * 64.0 / h
    if abs(cx - 32) < CENTER_RADIUS and abs(cy - 32) < CENTER_RADIUS:
        out["position"] = "center"
    elif min(abs(cx - 32), abs(cy - 32)) > 4:
        out["position"] = ("top " if cy < 32 else "bottom ") + ("left" if cx < 32 else "right")
    return out


def shape_task_accuracy(images, prompts: list[str]) -> dict:
    """Does each image show its prompt's color, shape and position?

    Returns {"color", "shape", "position", "background", "all": accuracies in [0, 1],
    "per_image": DataFrame (prompt, wanted and seen attributes, ok flags)}; "all" needs color,
    shape and position right.
    """
    arr = to_uint8(images)
    if len(arr) != len(prompts):
        raise ValueError(f"{len(arr)} images for {len(prompts)} prompts")
    rows = []
    for im, p in zip(arr, prompts):
        want, seen = parse_caption(p), describe(im)
        row = {"prompt": p}
        for k in ("color", "shape", "position", "background"):
            row[f"seen_{k}"] = seen[k]
            row[f"{k}_ok"] = seen[k] == want[k]
        row["all_ok"] = row["color_ok"] and row["shape_ok"] and row["position_ok"]
        rows.append(row)
    df = pd.DataFrame(rows)
    res = {k: float(df[f"{k}_ok"].mean()) for k in ("color", "shape", "position", "background", "all")}
    res["per_image"] = df
    return res


def latent_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of two latent tensors of the same shape."""
    return float(latent_mse_per(a, b).mean())


def latent_mse_per(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-sample mean squared difference of two (N, ...) latent tensors: (N,)."""
    if a.shape != b.shape:
        raise ValueError(f"latent shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    d = (a.detach().float().cpu() - b.detach().float().cpu()).pow(2)
    return d.reshape(len(d), -1).mean(1).double().numpy()  # (N,)


def psnr(images_a, images_b) -> float:
    """Mean PSNR in dB over image pairs (uint8 scale; identical pairs count as 100 dB).

    >>> psnr([np.zeros((4, 4, 3), np.uint8)], [np.full((4, 4, 3), 255, np.uint8)])
    0.0
    """
    return float(psnr_per(images_a, images_b).mean())


def psnr_per(images_a, images_b) -> np.ndarray:
    """PSNR in dB of each image pair: (N,)."""
    a, b = to_uint8(images_a).astype(np.float64), to_uint8(images_b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return np.where(mse == 0, 100.0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)))


def ssim_per(images_a, images_b) -> np.ndarray:
    """SSIM of each image pair (torchmetrics, Gaussian 11x11 window, data range [0, 1]): (N,).

    >>> a = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    >>> ssim_per(a, a).round(6).tolist()
    [1.0, 1.0]
    """
    # torchmetrics takes about a second to import: only when a comparison measures SSIM
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    def nchw(x):
        return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).double() / 255.0  # (N, 3, H, W) in [0, 1]

    a, b = nchw(images_a), nchw(images_b)
    k = min(11, a.shape[-1] - (1 - a.shape[-1] % 2))  # an odd window no larger than the image
    return ssim(a, b, data_range=1.0, kernel_size=k, reduction="none").numpy()


def mean_se(values) -> tuple[float, float]:
    """The mean and its standard error (sample std / sqrt(n); 0 for one value).

    >>> [round(x, 6) for x in mean_se([1.0, 2.0, 3.0])]
    [2.0, 0.57735]
    """
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def bootstrap_ci(values, *, draws: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of ``values`` (seeded: the same table every run).

    >>> bootstrap_ci([1.0] * 10)
    (1.0, 1.0)
    >>> lo, hi = bootstrap_ci([0, 1] * 32); lo < 0.5 < hi
    True
    """
    v = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), (draws, len(v)))
    means = v[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def evaluate(handle, prompts: list[str], seeds: list[int], *, denoiser=None, reference: dict | None = None,
             steps: int | None = None, guidance: float | None = None, batch_size: int = 64,
             control=None) -> dict:
    """Generate with ``handle`` (or ``denoiser`` in its place) the one way the app does
    (:mod:`pruning.sampling`), then measure.

    Returns {"latents", "images" (uint8), and on shapes captions "color", "shape", "position",
    "background", "all", "per_image"}; with ``reference`` ({"latents", "images"} of the original
    for the same prompts and seeds) also "latent_mse", "psnr", "ssim" (means) and "per_sample" (their
    per-image values, for intervals).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    lats, imgs = [], []
    for i in range(0, len(prompts), batch_size):
        z = generate_latents(handle, list(prompts[i:i + batch_size]), list(seeds[i:i + batch_size]), steps=steps,
                             guidance=guidance, denoiser=denoiser, stop=control)
        lats.append(z.float().cpu())
        imgs.append(to_uint8(decode_latents(handle, z)))
    out = {"latents": torch.cat(lats), "images": np.concatenate(imgs)}
    if is_shapes_task(prompts):
        out.update(shape_task_accuracy(out["images"], list(prompts)))
    if reference is not None:
        out["per_sample"] = {"latent_mse": latent_mse_per(out["latents"], reference["latents"]),
                             "psnr": psnr_per(out["images"], reference["images"]),
                             "ssim": ssim_per(out["images"], reference["images"])}
        out.update({k: float(v.mean()) for k, v in out["per_sample"].items()})
    return out


def is_shapes_task(prompts) -> bool:
    """Every prompt is a shapes caption the evaluator can check."""
    try:
        return all(parse_caption(p) for p in prompts)
    except (KeyError, ValueError, AttributeError, TypeError):
        return False
