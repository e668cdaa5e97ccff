"""Stable Diffusion 3 / 3.5 (MMDiT): ``SD3Transformer2DModel``, FlowMatchEuler, the pipeline's
batched CFG ([uncond | cond] in one doubled batch), two CLIPs + T5.

Prunable parts, following ``JointTransformerBlock``:

* operators: ``attn`` (joint attention over image and text tokens), ``attn2`` (the SD3.5
  dual attention on the image stream, where a block has it), ``ff``, ``ff_context`` and whole
  blocks (``joint_block``: both streams pass through);
* structures: joint heads spanning both streams (gated before ``to_out[0]`` and
  ``to_add_out``; slim ``to_q/k/v``, ``add_q/k/v_proj`` rows and both output projections'
  columns), ``attn2`` heads, ``ff`` and ``ff_context`` hidden neurons. These are the generic
  diffusers ``Attention`` / ``FeedForward`` rules; nothing SD3-specific is needed to cut them.
* the last block is ``context_pre_only``: its attention has no ``to_add_out`` (no text-stream
  output) and it has no ``ff_context``; its heads still read text tokens (``add_*_proj``).
* RMS q/k norms (SD3.5) act per head dim, so they survive head removal unchanged.

The real configs below are the public ``transformer/config.json`` files of the named repos.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.models.attention import JointTransformerBlock
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    calculate_shift,
    retrieve_timesteps,
)

from ..catalog import discover
from ..replacements import IdentityFluxBlock
from ..specs import Operator
from ..tiny import parts
from .base import FlowFamily, Trajectory, adaln_channels
from .renamer import Renamer

# stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json
SD3_MEDIUM_TRANSFORMER = {
    "attention_head_dim": 64,
    "caption_projection_dim": 1536,
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 24,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "sample_size": 128,
}

# stabilityai/stable-diffusion-3.5-medium, transformer/config.json (MMDiT-X: dual attention in blocks 0-12)
SD35_MEDIUM_TRANSFORMER = {
    **SD3_MEDIUM_TRANSFORMER,
    "dual_attention_layers": list(range(13)),
    "pos_embed_max_size": 384,
    "qk_norm": "rms_norm",
}

# stabilityai/stable-diffusion-3.5-large, transformer/config.json
SD35_LARGE_TRANSFORMER = {
    **SD3_MEDIUM_TRANSFORMER,
    "caption_projection_dim": 2432,
    "num_attention_heads": 38,
    "num_layers": 38,
    "qk_norm": "rms_norm",
}

T5_TOKENS = 256  # StableDiffusion3Pipeline's max_sequence_length default
CLIP_TOKENS = 77


class SD3Family(FlowFamily):
    name = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    denoiser_name = "transformer"
    denoiser_class = SD3Transformer2DModel
    denoiser_label = "an SD3 transformer"
    defaults = {"steps": 28, "guidance": 7.0, "resolution": 1024}
    timestep_scale = 1000  # the transformer reads t = 1000 s
    patch_multiple = 2  # patch_size 2 on the latents
    # EcoDiff released no SD3 config; FLUX's (the other MMDiT) is the nearest
    ecodiff_authors = {"masking_eps": 0.1, "beta": 0.01}
    fine_kinds = ("attn", "attn2", "ff", "ff_context")
    block_kinds = ("joint_block",)
    default_text_len = CLIP_TOKENS + T5_TOKENS  # CLIP tokens then T5 tokens
    references = {
        "sd3-medium": {"config": SD3_MEDIUM_TRANSFORMER, "hub_id": "stabilityai/stable-diffusion-3-medium-diffusers",
                       "resolution": 1024, "steps": 28, "guidance": 7.0},
        "sd35-medium": {"config": SD35_MEDIUM_TRANSFORMER, "hub_id": "stabilityai/stable-diffusion-3.5-medium",
                        "resolution": 1024, "steps": 40, "guidance": 4.5},
        "sd35-large": {"config": SD35_LARGE_TRANSFORMER, "hub_id": "stabilityai/stable-diffusion-3.5-large",
                       "resolution": 1024, "steps": 28, "guidance": 3.5},
    }

    # ------------------------------------------------------------------ loading
    def owns(self, denoiser) -> bool:
        return isinstance(denoiser, SD3Transformer2DModel)

    def default_settings(self, pipe, denoiser) -> dict:
        defaults = dict(self.defaults)
        res = denoiser.config.sample_size  # latent pixels, as the pipeline's default_sample_size
        if res:
            defaults["resolution"] = int(res) * getattr(pipe, "vae_scale_factor", 8)
        tok = getattr(pipe, "tokenizer_3", None)
        defaults["max_sequence_length"] = min(T5_TOKENS, int(getattr(tok, "model_max_length", T5_TOKENS)))
        return defaults

    # ------------------------------------------------------------------ catalog, masks, slim
    def conditioning(self, denoiser):
        return adaln_channels(denoiser)

    def discover_module(self, name, mod, ops, structs) -> bool:
        if not isinstance(mod, JointTransformerBlock):
            return False
        ops[name] = Operator(name, "joint_block")
        for child in ("attn", "attn2", "ff", "ff_context"):
            if getattr(mod, child, None) is not None:
                ops[f"{name}.{child}"] = Operator(f"{name}.{child}", child)
        return True  # its Attention / FeedForward children get the generic head / neuron structures

    def standin(self, module, kind):
        # a removed block returns (encoder_hidden_states, hidden_states) unchanged, as a FLUX double block
        return IdentityFluxBlock() if kind == "joint_block" else None

    def output_widths(self, module, kind):
        if kind == "joint_block":  # (text stream, image stream); the last block's text output is unused
            ctx = module.ff_context if module.ff_context is not None else module.ff
            return [ctx.net[2].out_features, module.ff.net[2].out_features]
        if kind == "attn" and getattr(module, "to_add_out", None) is None:  # context_pre_only: text part unused
            return [module.to_out[0].out_features] * 2
        return None

    def example_inputs(self, denoiser, *, batch, sample_size, text_len, rand, device, dtype) -> dict:
        cfg = denoiser.config
        side = sample_size or cfg.sample_size
        return dict(
            hidden_states=rand(batch, cfg.in_channels, side, side),  # (B, C, H, W), patchified inside
            encoder_hidden_states=rand(batch, text_len or self.default_text_len, cfg.joint_attention_dim),
            pooled_projections=rand(batch, cfg.pooled_projection_dim),
            timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
            return_dict=False,
        )

    def meta_denoiser(self, config: dict):
        """On the meta device, buffers too: the sin-cos position table (SD3.5-medium: 384 x 384 x 1536
        floats) is not computed (0.5 s instead of 20 s, no 0.9 GB)."""
        from accelerate import init_empty_weights

        with init_empty_weights(), torch.device("meta"):
            return SD3Transformer2DModel.from_config(config)

    # ------------------------------------------------------------------ sampling, rollout
    def uses_max_sequence_length(self) -> bool:
        return True

    def single_step_scheduler(self):
        return FlowMatchEulerDiscreteScheduler

    def prepare(self, handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta):
        device, den = handle.device, handle.denoiser
        cfg = guidance > 1  # StableDiffusion3Pipeline.do_classifier_free_guidance
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=extra.get("negative_prompt"),
            max_sequence_length=extra.get("max_sequence_length", T5_TOKENS))
        if cfg:  # (2B, L, D): [uncond | cond], as the pipeline does
            pe, pooled = torch.cat([npe, pe]), torch.cat([npooled, pooled])
        z = pipe.prepare_latents(len(prompts), den.config.in_channels, res, res, pe.dtype, device, gens, None)
        kwargs = {}
        c = scheduler.config
        if c.get("use_dynamic_shifting", None):
            p = den.config.patch_size
            kwargs["mu"] = calculate_shift((z.shape[2] // p) * (z.shape[3] // p), c.get("base_image_seq_len", 256),
                                           c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                                           c.get("max_shift", 1.16))
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=None, **kwargs)
        cond = {"encoder_hidden_states": pe, "pooled_projections": pooled}
        return Trajectory("sd3", scheduler, timesteps, z, cond, guidance, "cfg" if cfg else "none", height=res,
                          vae_scale_factor=pipe.vae_scale_factor, meta=meta)

    def raw_outputs(self, denoiser, traj, i, z):
        x = torch.cat([z, z]) if traj.mode == "cfg" else z  # (2B, C, H, W) for CFG
        timestep = traj.timesteps[i].expand(x.shape[0])
        return [denoiser(hidden_states=x, timestep=timestep, return_dict=False, **traj.cond)[0]]

    def lora_state_dict(self, pipeline_class, tensors):
        return pipeline_class.lora_state_dict(tensors), None  # SD3's loader returns no alphas

    # ------------------------------------------------------------------ native exports
    def native_blockers(self, denoiser, plan):
        ops = discover(denoiser).operators
        last = f"transformer_blocks.{len(denoiser.transformer_blocks) - 1}"
        out = []
        for f in plan.removed_operators:
            if ops[f].kind != "joint_block":
                out.append(f"{f}: a removed {ops[f].kind} inside a kept block (the config counts whole joint "
                           "blocks only)")
            elif f == last:
                out.append(f"{f}: the last joint block (diffusers builds the last block context_pre_only, without "
                           "the text-stream output layers the block before it has)")
        return out

    def native_units(self, denoiser):
        last = f"transformer_blocks.{len(denoiser.transformer_blocks) - 1}"
        return {f: (f,) for f, o in discover(denoiser).operators.items() if o.kind == "joint_block" and f != last}

    single_file_layout = "Stability's (sd3_medium.safetensors)"

    def single_file_state(self, state, config):
        """diffusers -> Stability's MMDiT names: the inverse of ``convert_sd3_transformer_checkpoint_to_diffusers``
        (q, k, v into ``qkv``; the last block's text-stream modulation and the final one back to shift, scale)."""
        r = Renamer(state)
        move, cat, unswap = r.move, r.cat, r.unswap
        r.take("pos_embed", "pos_embed.pos_embed")
        for new, old in (("x_embedder.proj", "pos_embed.proj"), ("context_embedder", "context_embedder"),
                         ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
                         ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
                         ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
                         ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"), ("final_layer.linear", "proj_out")):
            move(new, old)
        last = config["num_layers"] - 1
        for i in range(last + 1):
            x, c, b = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block", f"transformer_blocks.{i}"
            cat(f"{x}.attn.qkv", [f"{b}.attn.to_{q}" for q in "qkv"])
            cat(f"{c}.attn.qkv", [f"{b}.attn.add_{q}_proj" for q in "qkv"])
            for new, old in ((f"{x}.attn.ln_q", "attn.norm_q"), (f"{x}.attn.ln_k", "attn.norm_k"),
                             (f"{c}.attn.ln_q", "attn.norm_added_q"), (f"{c}.attn.ln_k", "attn.norm_added_k"),
                             (f"{x}.attn2.ln_q", "attn2.norm_q"), (f"{x}.attn2.ln_k", "attn2.norm_k")):
                move(new, f"{b}.{old}")
            if f"{b}.attn2.to_q.weight" in r.d:
                cat(f"{x}.attn2.qkv", [f"{b}.attn2.to_{q}" for q in "qkv"])
                move(f"{x}.attn2.proj", f"{b}.attn2.to_out.0")
            for new, old in (("attn.proj", "attn.to_out.0"), ("adaLN_modulation.1", "norm1.linear"),
                             ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2")):
                move(f"{x}.{new}", f"{b}.{old}")
            for new, old in (("attn.proj", "attn.to_add_out"), ("mlp.fc1", "ff_context.net.0.proj"),
                             ("mlp.fc2", "ff_context.net.2")):
                move(f"{c}.{new}", f"{b}.{old}")  # none in the last (context_pre_only) block
            if i == last:
                unswap(f"{c}.adaLN_modulation.1", f"{b}.norm1_context.linear")
            else:
                move(f"{c}.adaLN_modulation.1", f"{b}.norm1_context.linear")
        unswap("final_layer.adaLN_modulation.1", "norm_out.linear")
        return r.done()

    def native_layout(self, denoiser, plan):
        """``num_layers``: the kept blocks, renumbered; ``dual_attention_layers``: their new indices."""
        from ..native import NativeLayout, plain_config, renumber

        kept, renames = renumber("transformer_blocks", len(denoiser.transformer_blocks), set(plan.removed_operators))
        config = plain_config(denoiser)
        dual = set(config.get("dual_attention_layers") or ())
        config.update(num_layers=len(kept), dual_attention_layers=[new for new, old in enumerate(kept) if old in dual])
        return NativeLayout(config, renames)

    # ------------------------------------------------------------------ Taylor
    # ------------------------------------------------------------------ tests
    def tiny_components(self) -> dict:
        """Like diffusers' SD3 ``get_dummy_components``: two CLIPs of width 32 (concatenated: 64),
        a T5 of width 64, 3 blocks (block 0 with dual attention, the last context_pre_only)."""
        tokenizer, tokenizer_2, tokenizer_3 = parts.clip_tokenizer(), parts.clip_tokenizer(), parts.t5_tokenizer()
        text_encoder = parts.clip_text_encoder(tokenizer, projection=True, hidden=32)
        text_encoder_2 = parts.clip_text_encoder(tokenizer_2, projection=True, hidden=32)
        t5 = parts.t5_text_encoder(tokenizer_3, hidden=64)
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
            joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=16,
            dual_attention_layers=(0,), qk_norm="rms_norm",
        ).eval()
        return {
            "transformer": transformer, "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
            "vae": parts.vae(scaling_factor=1.5305, shift_factor=0.0609),
            "text_encoder": text_encoder, "tokenizer": tokenizer,
            "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2,
            "text_encoder_3": t5, "tokenizer_3": tokenizer_3,
            "image_encoder": None, "feature_extractor": None,
        }


SD3 = SD3Family()
