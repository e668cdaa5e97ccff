"""SD 1.x/2.x and SDXL: ``UNet2DConditionModel`` denoisers, DDIM/Euler, classic CFG.

Operators: each ``BasicTransformerBlock``'s ``attn1``, ``attn2``, ``ff``; each ResnetBlock2D
(not the up/downsampling ones); whole ``Transformer2DModel`` blocks. Structures: the generic
attention heads and FFN neurons, plus ResnetBlock2D inner channels in whole GroupNorm groups.
"""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from ..catalog import discover
from ..native import renumber
from ..replacements import IdentityTransformer, ResnetShortcut
from ..specs import Cut, Operator, Structure, channel_structure, linear_cuts, register_cutter
from ..tiny import parts
from .base import Family, Trajectory, cond_kwargs

_SD_COMMON = {
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
}

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
SD15_UNET = {
    **_SD_COMMON,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "sample_size": 64,
}

# stabilityai/stable-diffusion-2-1, unet/config.json
SD21_UNET = {
    **SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": True,
    "sample_size": 96,
}

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = {
    **_SD_COMMON,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "projection_class_embeddings_input_dim": 2816,
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
    "sample_size": 128,
}


def resnet_structure(name: str, res: ResnetBlock2D) -> Structure:
    channels, groups = res.conv1.out_channels, res.norm2.num_groups
    cuts = [Cut(f"{name}.conv1.weight", 0), Cut(f"{name}.norm2.weight", 0), Cut(f"{name}.norm2.bias", 0)]
    cuts += [Cut(f"{name}.conv1.bias", 0)] if res.conv1.bias is not None else []
    parts = [(f"{name}.conv1", channels), (f"{name}.conv2", channels)]
    if res.time_emb_proj is not None:
        halves = 2 if res.time_embedding_norm == "scale_shift" else 1
        for h in range(halves):  # scale_shift: [scale | shift], a channel is one row of each
            cuts += linear_cuts(name, [("time_emb_proj", res.time_emb_proj)], 0, offset=h * channels)
        parts.append((f"{name}.time_emb_proj", channels))
    cuts.append(Cut(f"{name}.conv2.weight", 1))
    return Structure(name, "group", "resnet", groups, channels // groups, tuple(cuts), tuple(parts))


@register_cutter(ResnetBlock2D)
def _cut_resnet(res: ResnetBlock2D, s: dict[str, Structure]) -> None:
    res.norm2.num_groups = res.norm2.num_channels // s["group"].unit_size


_BLOCK_PARTS = ("attn1", "attn2", "ff")  # a BasicTransformerBlock is gone when all of these that it has are
_WITHOUT_ATTENTION = {"CrossAttnDownBlock2D": "DownBlock2D", "CrossAttnUpBlock2D": "UpBlock2D"}


def _parts(block: str, ops) -> list[str]:
    return [f"{block}.{c}" for c in _BLOCK_PARTS if f"{block}.{c}" in ops]


class UNetFamily(Family):
    denoiser_name = "unet"
    denoiser_class = UNet2DConditionModel
    denoiser_label = "a UNet"
    fine_kinds = ("attn1", "attn2", "ff", "resnet")
    block_kinds = ("transformer", "resnet")

    def owns(self, denoiser) -> bool:
        return isinstance(denoiser, UNet2DConditionModel) or hasattr(denoiser, "down_blocks")

    def default_settings(self, pipe, denoiser) -> dict:
        defaults = dict(self.defaults)
        res = denoiser.config.sample_size  # in latent pixels
        if isinstance(res, (list, tuple)):
            res = res[0]
        if res:
            defaults["resolution"] = int(res) * getattr(pipe, "vae_scale_factor", 8)
        return defaults

    def discover_module(self, name, mod, ops, structs) -> bool:
        if isinstance(mod, Transformer2DModel):
            ops[name] = Operator(name, "transformer")
        elif isinstance(mod, BasicTransformerBlock):
            for child in ("attn1", "attn2", "ff"):
                if getattr(mod, child, None) is not None:
                    ops[f"{name}.{child}"] = Operator(f"{name}.{child}", child)
        elif isinstance(mod, ResnetBlock2D):
            if not (mod.up or mod.down):
                kept = ("conv_shortcut",) if mod.conv_shortcut is not None else ()
                ops[name] = Operator(name, "resnet", kept)
            structs[name] = resnet_structure(name, mod)
        else:
            return False
        return True

    def conditioning(self, denoiser):
        """The time embedding (plus SDXL's added embedding) that every resnet reads through
        ``time_emb_proj(silu(temb))``; None with a class embedding or another added embedding."""
        if getattr(denoiser, "class_embedding", None) is not None or not hasattr(denoiser, "time_embedding"):
            return None
        producers = ["time_embedding.linear_2"]
        add = getattr(denoiser, "add_embedding", None)
        if add is not None:
            if getattr(denoiser.config, "addition_embed_type", None) != "text_time":
                return None
            producers.append("add_embedding.linear_2")
        consumers = [f"{n}.time_emb_proj" for n, m in denoiser.named_modules()
                     if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None]
        return channel_structure(denoiser, "time_embedding", producers, consumers)

    def standin(self, module, kind):
        if kind == "resnet":
            return ResnetShortcut(module.conv_shortcut, module.output_scale_factor)
        if kind == "transformer":
            return IdentityTransformer()
        return None

    def output_widths(self, module, kind):
        if kind == "resnet":
            return [module.conv2.out_channels]
        if kind == "transformer":
            return [module.out_channels]
        return None

    # ------------------------------------------------------------------ native exports
    def native_blockers(self, denoiser, plan):
        ops = discover(denoiser).operators
        removed = set(plan.removed_operators)
        out = []
        for f in plan.removed_operators:
            kind = ops[f].kind
            if kind in _BLOCK_PARTS:
                block = f.rsplit(".", 1)[0]
                stays = [p for p in _parts(block, ops) if p not in removed]
                if stays:
                    out.append(f"{f}: part of the transformer block {block} ({stays[0]} stays; the config counts "
                               "whole blocks: remove its attn1, attn2 and ff together)")
            elif kind == "transformer":
                owner, _, _ = f.partition(".attentions.")
                block = denoiser.get_submodule(owner)
                if type(block).__name__ not in _WITHOUT_ATTENTION:
                    out.append(f"{f}: the attention of a {type(block).__name__} (diffusers' block without attention "
                               "differs in more than its attentions)")
                    continue
                stays = [f"{owner}.attentions.{j}" for j in range(len(block.attentions))
                         if f"{owner}.attentions.{j}" not in removed]
                if stays:
                    out.append(f"{f}: one of the attentions of {owner} ({stays[0]} stays; the config gives a block "
                               "all its attentions or none)")
            else:
                out.append(f"{f}: a removed {kind} (no config field leaves out a {kind})")
        if not out:
            out += self._mid_blocker(denoiser, self._counts(denoiser, removed, ops)[0])
        return out

    def _counts(self, denoiser, removed, ops):
        """Kept BasicTransformerBlocks per attention path (None: a down / up block that loses all its
        attentions), and the renames and dropped prefixes of the renumbering."""
        counts, renames, dropped = {}, {}, []
        for path, attn in [(n, m) for n, m in denoiser.named_modules() if isinstance(m, Transformer2DModel)]:
            owner = path.partition(".attentions.")[0]
            if path in removed or (owner != "mid_block" and all(
                    f"{owner}.attentions.{j}" in removed for j in range(len(denoiser.get_submodule(owner).attentions)))):
                counts[path] = None
                continue
            gone = {f"{path}.transformer_blocks.{k}" for k in range(len(attn.transformer_blocks))
                    if all(p in removed for p in _parts(f"{path}.transformer_blocks.{k}", ops))}
            kept, r = renumber(f"{path}.transformer_blocks", len(attn.transformer_blocks), gone)
            counts[path] = len(kept)
            renames.update(r)
            dropped += sorted(gone)
        return counts, renames, tuple(dropped)

    def _mid_blocker(self, denoiser, counts):
        last = len(denoiser.down_blocks) - 1
        mid, first = counts.get("mid_block.attentions.0"), counts.get(f"down_blocks.{last}.attentions.0")
        if mid is not None and first is not None and mid != first:
            return [f"mid_block.attentions.0: keeps {mid} transformer blocks and down_blocks.{last}.attentions.0 keeps "
                    f"{first}; diffusers builds both from transformer_layers_per_block[-1], so they must keep as many"]
        return []

    def native_units(self, denoiser):
        """Each BasicTransformerBlock: its attn1, attn2 and ff together."""
        ops = discover(denoiser).operators
        return {n: tuple(_parts(n, ops)) for n, m in denoiser.named_modules() if isinstance(m, BasicTransformerBlock)}

    def native_layout(self, denoiser, plan):
        """Per-attention block counts in ``transformer_layers_per_block`` (down blocks, and the mid block
        through the last entry) and ``reverse_transformer_layers_per_block`` (up blocks); a down / up block
        without attentions becomes a ``DownBlock2D`` / ``UpBlock2D``."""
        from ..native import NativeLayout, plain_config

        counts, renames, dropped = self._counts(denoiser, set(plan.removed_operators), discover(denoiser).operators)
        config = plain_config(denoiser)
        n = len(denoiser.down_blocks)
        layers = config["transformer_layers_per_block"]
        layers = [layers] * n if isinstance(layers, int) else list(layers)
        reverse = config.get("reverse_transformer_layers_per_block") or list(reversed(layers))
        entries = {}
        for stage, types, old, plain in (("down_blocks", config["down_block_types"], layers, "DownBlock2D"),
                                         ("up_blocks", config["up_block_types"], reverse, "UpBlock2D")):
            new_types, new = list(types), list(old)
            for i, block in enumerate(getattr(denoiser, stage)):
                paths = [f"{stage}.{i}.attentions.{j}" for j in range(len(getattr(block, "attentions", None) or []))]
                if not paths:
                    continue
                if all(counts[p] is None for p in paths):
                    new_types[i] = plain
                    continue
                per = [counts[p] for p in paths]
                new[i] = per[0] if len(set(per)) == 1 else per
            entries[stage] = (new_types, new)
        down_types, down = entries["down_blocks"]
        mid = counts.get("mid_block.attentions.0")
        if mid is not None and down_types[-1] == "DownBlock2D":
            down[-1] = mid  # unused by the block itself: the mid block's count
        config.update(down_block_types=down_types, up_block_types=entries["up_blocks"][0],
                      transformer_layers_per_block=down, reverse_transformer_layers_per_block=entries["up_blocks"][1])
        return NativeLayout(config, renames, dropped)

    def example_inputs(self, denoiser, *, batch, sample_size, text_len, rand, device, dtype) -> dict:
        cfg = denoiser.config
        side = sample_size or cfg.sample_size
        side = side[0] if isinstance(side, (tuple, list)) else side
        text = text_len or self.default_text_len
        kw = dict(
            sample=rand(batch, cfg.in_channels, side, side),  # (B, C, H, W)
            timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
            encoder_hidden_states=rand(batch, text, cfg.cross_attention_dim),
            return_dict=False,
        )
        if cfg.addition_embed_type == "text_time":
            n_time = 6
            text_dim = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
            kw["added_cond_kwargs"] = dict(
                text_embeds=rand(batch, text_dim),
                time_ids=torch.tensor([[side * 8, side * 8, 0, 0, side * 8, side * 8]] * batch,
                                      dtype=dtype).to(device),
            )
        return kw

    def single_step_scheduler(self):
        return DDIMScheduler

    def encode(self, handle, pipe, prompts, cfg, negative, res) -> dict:
        """Conditioning of the (CFG-doubled) batch; returns the denoiser kwargs (+ dtype)."""
        device = handle.device
        pe, npe = pipe.encode_prompt(prompts, device, 1, cfg, negative)
        if cfg:
            pe = torch.cat([npe, pe])  # (2B, L, D): [uncond | cond], as the pipeline does
        return {"encoder_hidden_states": pe.to(device)}

    def prepare(self, handle, pipe, scheduler, prompts, gens, steps, guidance, res, extra, meta):
        device, unet = handle.device, handle.denoiser
        cfg = guidance > 1 and unet.config.time_cond_proj_dim is None
        cond = self.encode(handle, pipe, prompts, cfg, extra.get("negative_prompt"), res)
        pe = cond["encoder_hidden_states"]
        scheduler.set_timesteps(steps, device=device)  # before the latents: init_noise_sigma depends on it
        z = pipe.prepare_latents(len(prompts), unet.config.in_channels, res, res, pe.dtype, device, gens, None)
        return Trajectory(handle.family, scheduler, scheduler.timesteps, z, cond, guidance, "cfg" if cfg else "none",
                          height=res, vae_scale_factor=pipe.vae_scale_factor, meta=meta)

    def raw_outputs(self, denoiser, traj, i, z):
        t, sched = traj.timesteps[i], traj.scheduler
        x = torch.cat([z, z]) if traj.mode == "cfg" else z  # (2B, C, H, W) for CFG
        sched._step_index = i
        x = sched.scale_model_input(x, t)
        return [denoiser(x, t, return_dict=False, **traj.cond)[0]]

    def train_loss(self, handle, x0, noise, cond, t):
        den = handle.denoiser
        sched = DDPMScheduler.from_config(handle.pipe.scheduler.config)
        tt = (t.to(x0.device, torch.long) if torch.is_tensor(t)
              else torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device))  # (B,)
        zt = sched.add_noise(x0, noise, tt)
        kind = sched.config.prediction_type
        target = noise if kind == "epsilon" else (sched.get_velocity(x0, noise, tt) if kind == "v_prediction" else x0)
        pred = den(zt, tt, return_dict=False, **cond_kwargs(cond))[0]
        return torch.nn.functional.mse_loss(pred, target)


class SDFamily(UNetFamily):
    name = "sd"
    pipeline_class = StableDiffusionPipeline
    defaults = {"steps": 50, "guidance": 7.5, "resolution": 512}
    pipeline_kwargs = {"safety_checker": None, "requires_safety_checker": False}
    references = {
        "sd15": {"config": SD15_UNET, "hub_id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 "resolution": 512, "steps": 50, "guidance": 7.5},
        "sd21": {"config": SD21_UNET, "hub_id": "stabilityai/stable-diffusion-2-1",
                 "resolution": 768, "steps": 50, "guidance": 7.5},
    }

    def tiny_components(self):
        """A 3-level UNet of width 32-64, one CLIP text encoder (the caller seeds torch)."""
        tokenizer = parts.clip_tokenizer()
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64, 64), norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4, 4),  # legacy name: the number of heads per level
            cross_attention_dim=32,
        )
        scheduler = DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        )
        return {
            "unet": unet.eval(), "scheduler": scheduler, "vae": parts.vae(),
            "text_encoder": parts.clip_text_encoder(tokenizer), "tokenizer": tokenizer,
            "safety_checker": None, "feature_extractor": None, "image_encoder": None,
        }

    def tiny_extra(self):
        return {"requires_safety_checker": False}


class SDXLFamily(UNetFamily):
    name = "sdxl"
    pipeline_class = StableDiffusionXLPipeline
    defaults = {"steps": 30, "guidance": 5.0, "resolution": 1024}
    references = {
        "sdxl": {"config": SDXL_UNET, "hub_id": "stabilityai/stable-diffusion-xl-base-1.0",
                 "resolution": 1024, "steps": 30, "guidance": 5.0},
    }

    def encode(self, handle, pipe, prompts, cfg, negative, res) -> dict:
        device = handle.device
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative)
        proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
        time_ids = pipe._get_add_time_ids((res, res), (0, 0), (res, res), dtype=pe.dtype,
                                          text_encoder_projection_dim=proj)
        if cfg:
            pe, pooled, time_ids = torch.cat([npe, pe]), torch.cat([npooled, pooled]), torch.cat([time_ids, time_ids])
        return {"added_cond_kwargs": {"text_embeds": pooled.to(device),
                                      "time_ids": time_ids.to(device).repeat(len(prompts), 1)},
                "encoder_hidden_states": pe.to(device)}

    def tiny_components(self):
        """SDXL's layout at width 16-64: two CLIP text encoders (concatenated), text-time embeddings."""
        tokenizer, tokenizer_2 = parts.clip_tokenizer(), parts.clip_tokenizer()
        text_encoder = parts.clip_text_encoder(tokenizer, hidden=32)
        text_encoder_2 = parts.clip_text_encoder(tokenizer_2, projection=True, hidden=32)
        time_dim = 8
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32, 64), norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 2, 4), transformer_layers_per_block=(1, 1, 2),
            use_linear_projection=True, cross_attention_dim=32 + 32,  # both encoders concatenated
            addition_embed_type="text_time", addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + 32,  # 6 time ids + pooled text
        )
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
            timestep_spacing="leading",
        )
        return {
            "unet": unet.eval(), "scheduler": scheduler, "vae": parts.vae(scaling_factor=0.13025),
            "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
            "image_encoder": None, "feature_extractor": None,
        }


SD = SDFamily()
SDXL = SDXLFamily()
