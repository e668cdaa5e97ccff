"""diffusers' memory savers on a :class:`~pruning.loading.Handle`: accelerate's offload hooks,
VAE tiling and slicing, and what the rest of the library needs to live with them.

Offload keeps the weights in CPU memory and moves a model (``"model"``) or each layer
(``"sequential"``, the weights then sit on the meta device between calls) to the accelerator
only while it runs. Masks, generation, EcoDiff and ``slim`` work through both (``slim`` copies a
hooked denoiser without its hooks: :func:`plain_copy`); Taylor importance and recovery need weight
gradients, so model offload only (sequential offload is refused there by ``grads.requires_grad``).
On a machine without an accelerator, ``device="cpu"`` attaches the same hooks and saves nothing
(what the tests use).

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> h2 = enable_memory_savers(h, offload="sequential", vae_tiling=True, device="cpu")
>>> next(h2.denoiser.parameters()).device, h2.device, h2.pipe.vae.use_tiling
(device(type='meta'), device(type='cpu'), True)
>>> small = plain_copy(h2.denoiser)
>>> next(small.parameters()).device, hasattr(small.conv_in, "_hf_hook")
(device(type='cpu'), False)
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager

import torch
from accelerate import cpu_offload_with_hook
from accelerate.hooks import AlignDevicesHook, CpuOffload, SequentialHook, remove_hook_from_module
from torch import nn

from . import validate
from .errors import SettingsError
from .validate import check_device

OFFLOAD_MODES = ("model", "sequential")
_ACCELERATE_ATTRS = ("_hf_hook", "_old_forward", "to", "cuda", "npu", "xpu", "mlu", "sdaa", "musa")


def _hooks(hook) -> list:
    return list(hook.hooks) if isinstance(hook, SequentialHook) else [hook]


def _normal(device) -> torch.device:
    d = torch.device(device)
    return torch.device("cpu") if d.type == "cpu" else d  # accelerate says "cpu:0"; torch's "cpu" != "cpu:0"


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its (or a submodule's) accelerate hook's execution device, else
    the device of its first parameter (``cpu`` for a module without any).

    >>> execution_device(nn.Linear(2, 2)), execution_device(nn.ReLU())
    (device(type='cpu'), device(type='cpu'))
    """
    for m in module.modules():
        for hook in _hooks(getattr(m, "_hf_hook", None)):
            if getattr(hook, "execution_device", None) is not None:
                return _normal(hook.execution_device)
    p = next(module.parameters(), None)
    return _normal(p.device) if p is not None else torch.device("cpu")


def offloaded(module: nn.Module) -> bool:
    """Whether accelerate's hooks are attached to ``module`` or any of its submodules."""
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def plain_copy(module: nn.Module, memo: dict | None = None, *, weights: bool = True) -> nn.Module:
    """A deep copy of ``module`` without accelerate's hooks, with real weights.

    A plain ``deepcopy`` would copy each hook too, and with it the models a hook points at (a
    model-offload hook offloads the previous model of the pipeline: the text encoder), and a
    sequentially offloaded model's weights stay behind in its hooks (the copy's are on meta).
    The copy's weights are on the CPU where the hooks kept them, else where the original's are.
    ``memo`` is passed on to ``deepcopy``; ``weights=False`` leaves meta tensors on meta.
    """
    hooked = [(name, m) for name, m in module.named_modules() if hasattr(m, "_hf_hook")]
    memo = {**(memo or {}), **{id(m._hf_hook): None for _, m in hooked}}
    new = copy.deepcopy(module, memo)
    for name, m in hooked:
        twin = new.get_submodule(name)
        _unhook(twin)
        for hook in _hooks(m._hf_hook):
            if weights and isinstance(hook, AlignDevicesHook) and hook.offload and hook.weights_map is not None:
                _restore_weights(twin, hook.weights_map)
    return new


def _unhook(module: nn.Module) -> None:
    """Drop accelerate's attributes from ``module`` (not its submodules) without calling the hook:
    the class's ``forward`` is back, or the instance override that was there before the hook."""
    before = module.__dict__.get("_old_forward", module.__dict__.get("forward"))
    for attr in (*_ACCELERATE_ATTRS, "forward"):
        module.__dict__.pop(attr, None)
    if before is not None and getattr(before, "__func__", None) is not type(module).forward:
        module.forward = before


def _restore_weights(module: nn.Module, weights) -> None:
    """Put a sequentially offloaded module's own tensors (held by its hook) back, as copies."""
    for name, p in list(module.named_parameters(recurse=False)):
        if p.is_meta and name in weights:
            setattr(module, name, nn.Parameter(weights[name].detach().clone(), requires_grad=p.requires_grad))
    for name, b in list(module.named_buffers(recurse=False)):
        if b.is_meta and name in weights:
            module._buffers[name] = weights[name].detach().clone()


def own_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module``'s own parameter or buffer ``name`` with its values: the module's tensor, or where
    sequential offload left it on the meta device, the copy its accelerate hook holds (not moved).

    >>> from accelerate import cpu_offload
    >>> layer = nn.Linear(2, 3)
    >>> w = layer.weight.detach().clone()
    >>> _ = cpu_offload(layer, execution_device="cpu")
    >>> layer.weight.device.type, torch.equal(own_tensor(layer, "weight"), w), own_tensor(layer, "nothing")
    ('meta', True, None)
    """
    t = getattr(module, name, None)
    if not isinstance(t, torch.Tensor) or not t.is_meta:
        return t if isinstance(t, torch.Tensor) else None
    for hook in _hooks(getattr(module, "_hf_hook", None)):
        weights = getattr(hook, "weights_map", None)
        if isinstance(hook, AlignDevicesHook) and hook.offload and weights is not None and name in weights:
            return weights[name]
    return t


def _accelerator() -> torch.device | None:
    acc = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    return torch.device(acc.type) if acc is not None else None


def enable_memory_savers(handle, *, offload: str | None = None, vae_tiling: bool = False,
                         vae_slicing: bool = False, device=None):
    """Turn on diffusers' memory savers for ``handle.pipe``; returns the handle to use from now on
    (its ``device`` is where the models compute). The pipeline is changed in place.

    ``offload``: ``"model"`` (``pipe.enable_model_cpu_offload``) or ``"sequential"``
    (``enable_sequential_cpu_offload``), onto ``device`` (default: the handle's device if it is an
    accelerator, else the first one found). ``vae_tiling`` / ``vae_slicing``: decode in tiles / one
    image at a time. Without an accelerator, offload fails with a ``SettingsError`` saying so.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.loading import handle_from_pipe
    >>> h = handle_from_pipe(tiny_pipeline("flux"), model_ref="tiny:flux")
    >>> enable_memory_savers(h, offload="disk")
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: offload must be one of ['model', 'sequential'], got 'disk'
    """

    offload = None if offload is None else validate.choice("offload", offload, OFFLOAD_MODES)
    pipe = handle.pipe
    if offload is not None:
        target = check_device(device) if device is not None else (
            handle.device if handle.device.type != "cpu" else _accelerator())
        if target is None:
            raise SettingsError(
                f"offload={offload!r} moves each model to an accelerator only while it runs, and this machine has "
                "none (no CUDA, MPS or XPU device); load without offload, or pass device='cpu' to attach the hooks "
                "anyway (they save no memory then)")
        enable = pipe.enable_model_cpu_offload if offload == "model" else pipe.enable_sequential_cpu_offload
        enable(device=target)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()
    return dataclasses.replace(handle, device=execution_device(handle.denoiser))


def release(pipe) -> None:
    """Move every model-offloaded component of ``pipe`` back to the CPU, as a pipeline call does at
    its end (our calls run on a shallow copy of the pipeline, which holds no hooks of its own)."""
    for hook in getattr(pipe, "_all_hooks", None) or ():
        hook.offload()


@contextmanager
def offloaded_like(handle, denoiser: nn.Module | None):
    """For one call on an offloaded pipeline: offload a replacement ``denoiser`` (a slim copy, which
    has no hooks) like the pipeline's own, so it runs on the execution device and the text encoder
    is moved off first; afterwards the hook is removed and the model is back where it was."""
    if denoiser is None or denoiser is handle.denoiser or offloaded(denoiser) or not offloaded(handle.denoiser):
        yield denoiser
        return
    p = next(denoiser.parameters(), None)
    home = p.device if p is not None else torch.device("cpu")
    own = [h for h in _hooks(getattr(handle.denoiser, "_hf_hook", None)) if isinstance(h, CpuOffload)]
    prev = own[0].prev_module_hook if own else None
    cpu_offload_with_hook(denoiser, handle.device, prev_module_hook=prev)
    try:
        yield denoiser
    finally:
        remove_hook_from_module(denoiser)
        _unhook(denoiser)
        denoiser.to(home)
