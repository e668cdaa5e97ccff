"""FLUX.1: ``FluxTransformer2DModel`` (double + single blocks), FlowMatchEuler, packed 2x2 latents.

Operators: double-block ``attn``, ``ff``, ``ff_context`` and whole double and single blocks.
Structures: joint heads of the double blocks (generic, spanning both streams), single-block
heads (``pre_only`` attention: heads slice the first part of ``proj_out``'s columns) and
single-block ``proj_mlp`` neurons (the second part), FFN neurons of ``ff`` and ``ff_context``.
Guidance: embedded (FLUX.1-dev) or true CFG with a negative pass.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from ..catalog import discover
from ..replacements import EmptyAttention, IdentityFluxBlock
from ..specs import Cut, Operator, Structure, linear_cuts, register_cutter, set_heads
from ..tiny import parts
from .base import FlowFamily, Trajectory, adaln_channels
from .renamer import Renamer

FLUX_DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale default
DEFAULT_FLUX_SAMPLE = 128  # latent pixels (1024 px / 8), packed 2x2 into 64x64 = 4096 tokens

# black-forest-labs/FLUX.1-dev, transformer/config.json
FLUX_DEV_TRANSFORMER = {
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

# black-forest-labs/FLUX.1-schnell: the same, without the guidance embedder
FLUX_SCHNELL_TRANSFORMER = {**FLUX_DEV_TRANSFORMER, "guidance_embeds": False}


def _single_heads(name: str, block: FluxSingleTransformerBlock) -> Structure:
    attn = block.attn
    inner, heads = attn.to_q.out_features, attn.heads
    rows = [("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v)]
    cuts = linear_cuts(f"{name}.attn", rows, 0) + [Cut(f"{name}.proj_out.weight", 1, 0)]
    parts = ((f"{name}.attn", inner), (f"{name}.proj_out", block.proj_out.in_features))
    return Structure(f"{name}.attn", "head", "single_attn", heads, inner // heads, tuple(cuts), parts)


def _single_mlp(name: str, block: FluxSingleTransformerBlock) -> Structure:
    mlp = block.proj_mlp.out_features
    attn_width = block.proj_out.in_features - mlp
    cuts = linear_cuts(name, [("proj_mlp", block.proj_mlp)], 0) + [Cut(f"{name}.proj_out.weight", 1, attn_width)]
    parts = ((f"{name}.proj_mlp", mlp), (f"{name}.proj_out", block.proj_out.in_features))
    return Structure(f"{name}.proj_mlp", "neuron", "proj_mlp", mlp, 1, tuple(cuts), parts)


@register_cutter(FluxSingleTransformerBlock)
def _cut_single(block: FluxSingleTransformerBlock, s: dict[str, Structure]) -> None:
    attn_width = block.attn.to_q.weight.shape[0]
    if "head" in s:
        set_heads(block.attn, s["head"].unit_size)
        if attn_width == 0:  # every head pruned: the MLP half of proj_out is all that is left
            block.attn = EmptyAttention()
    block.mlp_hidden_dim = block.proj_mlp.weight.shape[0]
    if hasattr(block.proj_out, "_tp_packed_row_blocks"):
        block.proj_out._tp_packed_row_blocks = [attn_width, block.mlp_hidden_dim]


class FluxFamily(FlowFamily):
    name = "flux"
    pipeline_class = FluxPipeline
    denoiser_name = "transformer"
    denoiser_class = FluxTransformer2DModel
    denoiser_label = "a FLUX transformer"
    defaults = {"steps": 28, "guidance": 3.5, "resolution": 1024}
    default_guidance_mode = "embedded"
    cfg_doubles_batch = False
    patch_multiple = 2
    ecodiff_authors = {"masking_eps": 0.1, "beta": 0.01}
    fine_kinds = ("attn", "ff", "ff_context")
    block_kinds = ("double_block", "single_block")
    default_text_len = 512
    latent_packing = 4
    references = {
        "flux-dev": {"config": FLUX_DEV_TRANSFORMER, "hub_id": "black-forest-labs/FLUX.1-dev",
                     "resolution": 1024, "steps": 28, "guidance": 3.5},
        "flux-schnell": {"config": FLUX_SCHNELL_TRANSFORMER, "hub_id": "black-forest-labs/FLUX.1-schnell",
                         "resolution": 1024, "steps": 4, "guidance": 0.0},
    }

    def owns(self, denoiser) -> bool:
        return hasattr(denoiser, "single_transformer_blocks")

    def default_settings(self, pipe, denoiser) -> dict:
        defaults = dict(self.defaults)
        res = getattr(pipe.vae.config, "sample_size", None)  # no sample size on the transformer; the VAE's is in px
        tok = getattr(pipe, "tokenizer_2", None)
        defaults["max_sequence_length"] = min(512, int(getattr(tok, "model_max_length", 512)))
        if isinstance(res, (list, tuple)):
            res = res[0]
        if res:
            defaults["resolution"] = int(res)
        return defaults

    def conditioning(self, denoiser):
        return adaln_channels(denoiser)

    def discover_module(self, name, mod, ops, structs) -> bool:
        if isinstance(mod, FluxTransformerBlock):
            ops[name] = Operator(name, "double_block")
            for child in ("attn", "ff", "ff_context"):
                ops[f"{name}.{child}"] = Operator(f"{name}.{child}", child)
        elif isinstance(mod, FluxSingleTransformerBlock):
            ops[name] = Operator(name, "single_block")
            if getattr(mod.attn, "heads", 0):  # a slim model's emptied attention (EmptyAttention) has none left
                structs[f"{name}.attn"] = _single_heads(name, mod)
            if mod.proj_mlp.out_features:  # nor a slim model's emptied MLP
                structs[f"{name}.proj_mlp"] = _single_mlp(name, mod)
        else:
            return False
        return True

    def standin(self, module, kind):
        return IdentityFluxBlock() if kind in ("double_block", "single_block") else None

    def output_widths(self, module, kind):
        if kind == "double_block":  # returns (encoder_hidden_states, hidden_states)
            return [module.ff_context.net[2].out_features, module.ff.net[2].out_features]
        if kind == "single_block":
            return [module.proj_out.out_features] * 2
        return None

    def example_inputs(self, denoiser, *, batch, sample_size, text_len, rand, device, dtype) -> dict:
        cfg = denoiser.config
        side = (sample_size or DEFAULT_FLUX_SAMPLE) // 2  # tokens per side after 2x2 packing
        tokens, text = side * side, text_len or self.default_text_len
        ids = torch.zeros(tokens, 3)
        ids[:, 1] = torch.arange(side).repeat_interleave(side)  # (tokens,) row index
        ids[:, 2] = torch.arange(side).repeat(side)  # (tokens,) column index
        kw = dict(
            hidden_states=rand(batch, tokens, cfg.in_channels),  # (B, tokens, C*4)
            encoder_hidden_states=rand(batch, text, cfg.joint_attention_dim),
            pooled_projections=rand(batch, cfg.pooled_projection_dim),
            timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
            img_ids=ids.to(device=device, dtype=dtype),
            txt_ids=torch.zeros(text, 3, device=device, dtype=dtype),
            return_dict=False,
        )
        if cfg.guidance_embeds:
            kw["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)
        return kw

    def uses_max_sequence_length(self) -> bool:
        return True

    def unpack(self, z, height, vae_scale_factor):
        return FluxPipeline._unpack_latents(z, height, height, vae_scale_factor)

    def pack(self, pipe, z):
        return pipe._pack_latents(z, *z.shape[:2], *z.shape[2:])  # (B, C, H, W) -> (B, H/2 * W/2, 4C)

    def single_step_scheduler(self):
        return FlowMatchEulerDiscreteScheduler

    def prepare(self, handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta):
        device, den = handle.device, handle.denoiser
        msl = extra.get("max_sequence_length", 512)
        mode = "true_cfg" if "true_cfg_scale" in extra and guidance > 1 else "embedded"
        pe, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                                  num_images_per_prompt=1, max_sequence_length=msl)
        z, img_ids = pipe.prepare_latents(len(prompts), den.config.in_channels // 4, res, res, pe.dtype, device,
                                          gens, None)
        sigmas = np.linspace(1.0, 1 / steps, steps)
        c = scheduler.config
        mu = calculate_shift(z.shape[1], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
        embedded = guidance if mode == "embedded" else FLUX_DEFAULT_GUIDANCE  # true CFG: the pipeline's default
        g = torch.full([1], embedded, device=device, dtype=torch.float32).expand(z.shape[0]) \
            if den.config.guidance_embeds else None
        cond = dict(guidance=g, pooled_projections=pooled, encoder_hidden_states=pe, txt_ids=text_ids,
                    img_ids=img_ids)
        neg = None
        if mode == "true_cfg":
            npe, npooled, ntext = pipe.encode_prompt(prompt=extra["negative_prompt"], prompt_2=None, device=device,
                                                     num_images_per_prompt=1, max_sequence_length=msl)
            neg = {**cond, "pooled_projections": npooled, "encoder_hidden_states": npe, "txt_ids": ntext}
        return Trajectory("flux", scheduler, timesteps, z, cond, guidance, mode, neg, height=res,
                          vae_scale_factor=pipe.vae_scale_factor, meta=meta)

    def raw_outputs(self, denoiser, traj, i, z):
        t = traj.timesteps[i]
        timestep = t.expand(z.shape[0]).to(z.dtype) / 1000
        outs = [denoiser(hidden_states=z, timestep=timestep, return_dict=False, **traj.cond)[0]]
        if traj.mode == "true_cfg":
            outs.append(denoiser(hidden_states=z, timestep=timestep, return_dict=False, **traj.neg_cond)[0])
        return outs

    def lora_state_dict(self, pipeline_class, tensors):
        return pipeline_class.lora_state_dict(tensors, return_alphas=True)

    def native_blockers(self, denoiser, plan):
        ops = discover(denoiser).operators
        return [f"{f}: a removed {ops[f].kind} inside a kept block (the config counts whole double and single "
                "blocks only)" for f in plan.removed_operators if ops[f].kind not in self.block_kinds]

    def native_units(self, denoiser):
        ops = discover(denoiser).operators
        return {f: (f,) for f, o in ops.items() if o.kind in self.block_kinds}

    single_file_layout = "Black Forest Labs' (flux1-dev.safetensors)"

    def single_file_state(self, state, config):
        """diffusers -> BFL names: the inverse of ``convert_flux_transformer_checkpoint_to_diffusers``
        (q, k, v concatenated into ``qkv``; a single block's q, k, v and MLP rows into ``linear1``; the
        final modulation's halves swapped back to shift, scale)."""
        r = Renamer(state)
        move, cat = r.move, r.cat
        for new, old in (("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                         ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                         ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                         ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                         ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                         ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
                         ("txt_in", "context_embedder"), ("img_in", "x_embedder"), ("final_layer.linear", "proj_out")):
            move(new, old)
        for i in range(config["num_layers"]):
            o, b = f"double_blocks.{i}", f"transformer_blocks.{i}"
            move(f"{o}.img_mod.lin", f"{b}.norm1.linear")
            move(f"{o}.txt_mod.lin", f"{b}.norm1_context.linear")
            cat(f"{o}.img_attn.qkv", [f"{b}.attn.to_{x}" for x in "qkv"])
            cat(f"{o}.txt_attn.qkv", [f"{b}.attn.add_{x}_proj" for x in "qkv"])
            for new, old in (("img_attn.norm.query_norm", "norm_q"), ("img_attn.norm.key_norm", "norm_k"),
                             ("txt_attn.norm.query_norm", "norm_added_q"), ("txt_attn.norm.key_norm", "norm_added_k")):
                r.take(f"{o}.{new}.scale", f"{b}.attn.{old}.weight")
            for new, old in (("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"), ("txt_mlp.0", "ff_context.net.0.proj"),
                             ("txt_mlp.2", "ff_context.net.2"), ("img_attn.proj", "attn.to_out.0"),
                             ("txt_attn.proj", "attn.to_add_out")):
                move(f"{o}.{new}", f"{b}.{old}")
        for i in range(config["num_single_layers"]):
            o, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
            move(f"{o}.modulation.lin", f"{b}.norm.linear")
            cat(f"{o}.linear1", [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"])
            r.take(f"{o}.norm.query_norm.scale", f"{b}.attn.norm_q.weight")
            r.take(f"{o}.norm.key_norm.scale", f"{b}.attn.norm_k.weight")
            move(f"{o}.linear2", f"{b}.proj_out")
        r.unswap("final_layer.adaLN_modulation.1", "norm_out.linear")
        return r.done()

    def native_layout(self, denoiser, plan):
        """``num_layers`` / ``num_single_layers``: the kept blocks, renumbered in order."""
        from ..native import NativeLayout, plain_config, renumber

        removed = set(plan.removed_operators)
        double, r1 = renumber("transformer_blocks", len(denoiser.transformer_blocks), removed)
        single, r2 = renumber("single_transformer_blocks", len(denoiser.single_transformer_blocks), removed)
        config = {**plain_config(denoiser), "num_layers": len(double), "num_single_layers": len(single)}
        return NativeLayout(config, {**r1, **r2})

    def taylor_guidance(self, handle) -> float:
        embedded = handle.defaults.get("guidance_mode", "embedded") == "embedded"
        return handle.defaults["guidance"] if embedded else 1.0

    def tiny_components(self):
        """2 double and 2 single blocks of width 64, a CLIP and a T5 text encoder."""
        tokenizer, tokenizer_2 = parts.clip_tokenizer(), parts.t5_tokenizer()
        text_encoder = parts.clip_text_encoder(tokenizer, hidden=32)
        t5 = parts.t5_text_encoder(tokenizer_2, hidden=32)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * 4,  # latent channels x the 2x2 packing
            num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
            joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
        ).eval()
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
        return {
            "transformer": transformer, "scheduler": scheduler,
            "vae": parts.vae(scaling_factor=0.5, shift_factor=0.0),
            "text_encoder": text_encoder, "tokenizer": tokenizer,
            "text_encoder_2": t5, "tokenizer_2": tokenizer_2,
            "image_encoder": None, "feature_extractor": None,
        }


FLUX = FluxFamily()
