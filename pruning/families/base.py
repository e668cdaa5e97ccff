"""The protocol of a model family: what the rest of the package asks a family.

A family module defines one subclass of :class:`Family` (or more, sharing code, as SD and
SDXL do), creates its instance and is named in ``pruning.families.REGISTRY``. Every hook has
one caller in the generic code, named below; a hook left at its default here is the common
behaviour (diffusers ``Attention`` heads and ``FeedForward`` neurons need no family code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


def cond_kwargs(cond) -> dict:
    """The denoiser's conditioning kwargs of a :class:`Trajectory` (its ``cond``) or a plain dict."""
    return cond.cond if isinstance(cond, Trajectory) else dict(cond)


def flow_sigma(t, n_train: int, x0: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | float]:
    """A flow family's noise level sigma = t / n_train: ``((B,) sigma x scale, the denoiser's
    timestep; sigma broadcastable against x0)``, for one timestep (a number) or one per sample
    (a (B,) tensor).

    >>> s, b = flow_sigma(torch.tensor([0.0, 500.0]), 1000, torch.zeros(2, 16, 4))
    >>> s.tolist(), tuple(b.shape)
    ([0.0, 0.5], (2, 1, 1))
    >>> flow_sigma(250, 1000, torch.zeros(2, 16, 4), scale=1000)[0].tolist()
    [250.0, 250.0]
    """
    if torch.is_tensor(t):
        sigma = (t.to(x0.device, torch.float32) / n_train).to(x0.dtype)
        return sigma * scale, sigma.view(-1, *(1,) * (x0.dim() - 1))  # (B,) -> (B, 1, ...)
    sigma = t / n_train
    return torch.full((x0.shape[0],), sigma * scale, dtype=x0.dtype, device=x0.device), sigma


@dataclass
class Trajectory:
    """Everything a step needs besides z_i. Tensors are fixed (no grad)."""

    family: str
    scheduler: object
    timesteps: torch.Tensor  # (T,)
    z0: torch.Tensor  # initial noise, as the denoiser consumes it (packed for FLUX)
    cond: dict  # denoiser kwargs for the conditional (or doubled CFG) batch
    guidance: float
    mode: str  # "cfg" | "none" | "embedded" | "true_cfg"
    neg_cond: dict | None = None  # FLUX true CFG: the negative pass
    height: int = 0
    vae_scale_factor: int = 8
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def unpack(self, z: torch.Tensor) -> torch.Tensor:
        """Latents as (B, C, H, W) (FLUX's packed tokens are unpacked)."""
        from . import get  # the registry (the package's __init__, which imports no family module)

        return get(self.family).unpack(z, self.height, self.vae_scale_factor)


class Family:
    # ------------------------------------------------------------------ identity (loading, plans, export)
    name: ClassVar[str]
    pipeline_class: ClassVar[type]  # the diffusers pipeline (isinstance and model_index.json `_class_name`)
    denoiser_name: ClassVar[str]  # the pipeline component: "unet" | "transformer"
    denoiser_class: ClassVar[type]  # what load_pruned rebuilds from the base config
    denoiser_label: ClassVar[str]  # for errors: "a UNet", "a FLUX transformer", ...
    defaults: ClassVar[dict]  # steps, guidance, resolution of the real models
    default_guidance_mode: ClassVar[str] = "cfg"
    cfg_doubles_batch: ClassVar[bool] = True  # "cfg" runs [uncond | cond] in one doubled batch
    patch_multiple: ClassVar[int] = 1  # image sides: a multiple of the VAE factor x this
    pipeline_kwargs: ClassVar[dict] = {}  # extra from_pretrained kwargs (SD: no safety checker)
    ecodiff_authors: ClassVar[dict] = {"masking_eps": 0.5, "beta": 0.5}  # EcoDiff's released configs
    fine_kinds: ClassVar[tuple[str, ...]] = ()  # operator kinds this family adds (catalog granularity)
    block_kinds: ClassVar[tuple[str, ...]] = ()
    default_text_len: ClassVar[int] = 77  # text tokens of a reference forward (catalog / MACs)
    latent_packing: ClassVar[int] = 1  # denoiser in_channels per latent element (FLUX packs 2x2: 4)

    # ------------------------------------------------------------------ loading.py
    def owns(self, denoiser: nn.Module) -> bool:
        """This denoiser belongs to the family (plan validation, catalog)."""
        raise NotImplementedError

    def default_settings(self, pipe, denoiser: nn.Module) -> dict:
        """Generation defaults of a loaded pipeline: ``defaults`` with its own resolution (and extras)."""
        return dict(self.defaults)

    # ------------------------------------------------------------------ catalog.py, replacements.py
    def discover_module(self, name: str, module: nn.Module, ops: dict, structs: dict) -> bool:
        """Add the operators (and structures) of a family block type; True: ``module`` is handled."""
        return False

    def conditioning(self, denoiser: nn.Module):
        """The conditioning channels of ``denoiser`` (a ``"channel"`` :class:`~pruning.specs.Structure`,
        see :func:`~pruning.specs.channel_structure`), or None where the family has none it knows."""
        return None

    def standin(self, module: nn.Module, kind: str):
        """The stand-in of a removed operator of a family kind (None: not this family's kind)."""
        return None

    def output_widths(self, module: nn.Module, kind: str) -> list[int] | None:
        return None

    # ------------------------------------------------------------------ metrics.py
    def example_inputs(self, denoiser: nn.Module, *, batch: int, sample_size: int | None, text_len: int | None,
                       rand, device: torch.device, dtype: torch.dtype) -> dict:
        """Keyword arguments of one forward (``rand(*shape)`` draws a tensor); ``sample_size`` is the
        latent side before any packing."""
        raise NotImplementedError

    # ------------------------------------------------------------------ sampling.py, rollout.py
    def uses_max_sequence_length(self) -> bool:
        return False

    def unpack(self, z: torch.Tensor, height: int, vae_scale_factor: int) -> torch.Tensor:
        """Latents as the pipeline holds them -> (B, C, H, W)."""
        return z

    def pack(self, pipe, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents -> as the denoiser consumes them."""
        return z

    def single_step_scheduler(self):
        """The scheduler class that replaces a multistep or ancestral one (from its config)."""
        raise NotImplementedError

    def prepare(self, handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta):
        """Conditioning, initial latents and timesteps: a ``rollout.Trajectory``."""
        raise NotImplementedError

    def raw_outputs(self, denoiser: nn.Module, traj, i: int, z: torch.Tensor) -> list[torch.Tensor]:
        """The denoiser's outputs at step i exactly as the pipeline calls it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ lora.py
    def lora_state_dict(self, pipeline_class: type, tensors: dict) -> tuple[dict, dict | None]:
        """(state dict, network alphas) as the pipeline's ``load_lora_weights`` reads a LoRA file."""
        return pipeline_class.lora_state_dict(tensors)

    # ------------------------------------------------------------------ methods/diffpruning.py, tiny/train.py
    def taylor_guidance(self, handle) -> float:
        """Guidance of Taylor's conditional pass (1.0: no CFG; embedded guidance where distilled)."""
        return 1.0

    def train_loss(self, handle, x0: torch.Tensor, noise: torch.Tensor, cond, t) -> torch.Tensor:
        """The denoising objective (the model's training loss) at timestep ``t`` in
        [0, num_train_timesteps): one int for every sample, or a (B,) tensor, one per sample (see
        :meth:`train_timesteps`). ``x0`` and ``noise`` as the denoiser consumes latents (see
        :meth:`pack`); ``cond``: a ``Trajectory`` or a dict of the denoiser's conditioning kwargs."""
        raise NotImplementedError

    def train_timesteps(self, batch: int, generator: torch.Generator, n_train: int) -> torch.Tensor:
        """(batch,) timesteps drawn as this family's models train: uniform integers in [0, n_train)
        (DDPM); the flow families draw a logit-normal sigma (fractional timesteps)."""
        return torch.randint(0, n_train, (batch,), generator=generator)

    # ------------------------------------------------------------------ native.py
    def native_blockers(self, denoiser: nn.Module, plan) -> list[str]:
        """Which removed operators of ``plan`` (normalized) this family's diffusers config cannot
        state: one ``"FQN: reason"`` line each ([] = the removals are native). Unit pruning and
        compensated stand-ins are checked generically, before this."""
        return [f"{fqn}: {self.denoiser_label} has no native layout" for fqn in plan.removed_operators]

    def native_units(self, denoiser: nn.Module) -> dict[str, tuple[str, ...]]:
        """The removals a native plan is made of (``methods.native_plan``): ``{block FQN: the operator
        FQNs that remove it together}`` ({}: none)."""
        return {}

    single_file_layout: ClassVar[str | None] = None  # the original key layout a single-file export uses

    def single_file_state(self, state: dict, config: dict) -> dict:
        """A native state dict in the original single-file key layout (the inverse of diffusers'
        ``convert_*_checkpoint_to_diffusers``); block counts follow from the keys."""
        raise NotImplementedError(f"{self.name}: no single-file layout")

    def native_layout(self, denoiser: nn.Module, plan):
        """The ``native.NativeLayout`` (rewritten config, key renames) of a plan without blockers."""
        raise NotImplementedError

    # ------------------------------------------------------------------ reference.py, testing.py
    references: ClassVar[dict[str, dict]] = {}  # name -> {"config", "hub_id", "resolution", "steps", "guidance"}

    def meta_denoiser(self, config: dict) -> nn.Module:
        from accelerate import init_empty_weights

        with init_empty_weights():
            return self.denoiser_class.from_config(config)

    def tiny_components(self) -> dict[str, Any]:
        """The components of a tiny random pipeline (the caller seeds torch)."""
        raise NotImplementedError

    def tiny_extra(self) -> dict:
        """Extra constructor kwargs of the tiny pipeline."""
        return {}

    def __repr__(self) -> str:
        return f"<family {self.name}>"


ADALN_EMBEDDERS = ("CombinedTimestepTextProjEmbeddings", "CombinedTimestepGuidanceTextProjEmbeddings")
ADALN_NORMS = ("AdaLayerNormZero", "AdaLayerNormZeroSingle", "AdaLayerNormContinuous", "SD35AdaLayerNormZeroX")


def adaln_channels(denoiser: nn.Module, embedder: str = "time_text_embed"):
    """The conditioning channels of a DiT with AdaLN modulation (FLUX, SD3): ``embedder`` sums its
    children's ``linear_2`` outputs (timestep, guidance, pooled text) into the embedding that every
    AdaLN layer reads as ``linear(silu(emb))``. None for another layout (an AdaLN that embeds its own
    timestep, an unknown embedder).

    >>> from pruning.testing import tiny_pipeline
    >>> s = adaln_channels(tiny_pipeline("flux").transformer)
    >>> s.fqn, s.component, sorted({c.param.split(".")[-2] for c in s.cuts if c.dim == 1})
    ('time_text_embed', 'cond', ['linear'])
    """
    from ..specs import channel_structure  # specs imports the family registry

    emb = getattr(denoiser, embedder, None)
    if emb is None or type(emb).__name__ not in ADALN_EMBEDDERS:
        return None
    producers = [f"{embedder}.{n}.linear_2" for n, child in emb.named_children() if hasattr(child, "linear_2")]
    norms = [(n, m) for n, m in denoiser.named_modules() if type(m).__name__ in ADALN_NORMS]
    if any(getattr(m, "emb", None) is not None for _, m in norms):
        return None
    return channel_structure(denoiser, embedder, producers, [f"{n}.linear" for n, _ in norms])


class FlowFamily(Family):
    """A rectified-flow family (FLUX, SD3): its models train on z_t = (1 - s) x0 + s noise with
    target noise - x0 and a logit-normal s; the denoiser reads the timestep s x ``timestep_scale``."""

    timestep_scale: ClassVar[float] = 1.0  # FLUX reads t = s, SD3 t = 1000 s

    def train_loss(self, handle, x0, noise, cond, t):
        """Rectified flow: z_t = (1 - s) x0 + s noise, target noise - x0."""
        n_train = handle.pipe.scheduler.config.num_train_timesteps
        timestep, sigma = flow_sigma(t, n_train, x0, scale=self.timestep_scale)
        zt = (1 - sigma) * x0 + sigma * noise
        pred = handle.denoiser(hidden_states=zt, timestep=timestep, return_dict=False, **cond_kwargs(cond))[0]
        return torch.nn.functional.mse_loss(pred, noise - x0)

    def train_timesteps(self, batch, generator, n_train):
        """A logit-normal sigma in (0, 1) per sample, as a timestep sigma * n_train."""
        return torch.sigmoid(torch.randn(batch, generator=generator)) * n_train
