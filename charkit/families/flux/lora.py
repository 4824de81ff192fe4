"""Flux LoRA training: text conditioning and the rectified-flow loss on packed latents.

As in diffusers' ``train_dreambooth_lora_flux.py``: latents are shifted and scaled, noised along
the flow ``x_t = (1 - sigma) x_0 + sigma * noise`` at a timestep from the configured density, packed
into 2x2 patches with their position ids, and the transformer (with the distilled guidance value
when it has a guidance embedder) predicts ``noise - x_0``. Text embeddings (CLIP pooled + T5) come
from the pipeline's own ``encode_prompt`` and are cached.

By default only attention projections are adapted (``SPEC.lora_targets``); ``lora.scope = "all_linear"``
adapts every Linear of the blocks, as kohya and ai-toolkit do.
"""

from __future__ import annotations

import torch


def noise_scheduler(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


def prediction_type(scheduler) -> str:
    return "flow"


def encode_text(pipe, captions: list[str], *, device) -> dict[str, torch.Tensor]:
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=captions, prompt_2=None, device=device, num_images_per_prompt=1
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids}


def text_shapes(denoiser_config, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of what :func:`encode_text` returns: the pipeline's 512 T5 tokens, CLIP's pooled vector, the ids."""
    c = denoiser_config
    return {
        "prompt_embeds": (batch_size, 512, c.joint_attention_dim),
        "pooled_prompt_embeds": (batch_size, c.pooled_projection_dim),
        "text_ids": (512, 3),
    }


def scale_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    shift = pipe.vae.config.get("shift_factor") or 0.0
    return (latents - shift) * pipe.vae.config.scaling_factor


def sample_sigmas(scheduler, batch_size: int, *, loss_cfg, generator: torch.Generator, device):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        loss_cfg.timestep_sampling,
        batch_size,
        loss_cfg.logit_mean,
        loss_cfg.logit_std,
        loss_cfg.mode_scale,
        generator=generator,
    )
    n = scheduler.config.num_train_timesteps
    idx = (u * n).long().clamp(0, n - 1)
    return scheduler.timesteps[idx].to(device), scheduler.sigmas[idx].to(device)


def training_loss(pipe, denoiser, scheduler, batch, *, loss_cfg, generator: torch.Generator) -> torch.Tensor:
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    latents = batch.latents
    b, c, h, w = latents.shape
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps, sigmas = sample_sigmas(scheduler, b, loss_cfg=loss_cfg, generator=generator, device=latents.device)
    sigmas = sigmas.view(b, 1, 1, 1).to(latents.dtype)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
    config = getattr(denoiser, "module", denoiser).config  # unwrap DDP
    guidance = torch.full((b,), loss_cfg.guidance, device=latents.device) if config.guidance_embeds else None
    pred = denoiser(
        hidden_states=packed,
        timestep=timesteps / 1000.0,
        guidance=guidance,
        pooled_projections=batch.text["pooled_prompt_embeds"],
        encoder_hidden_states=batch.text["prompt_embeds"],
        txt_ids=batch.text["text_ids"],
        img_ids=img_ids,
        return_dict=False,
    )[0]
    vsf = pipe.vae_scale_factor
    pred = FluxPipeline._unpack_latents(pred, height=h * vsf, width=w * vsf, vae_scale_factor=vsf)
    target = noise - latents
    weighting = compute_loss_weighting_for_sd3(loss_cfg.weighting, sigmas.float())
    err = weighting * (pred.float() - target.float()) ** 2
    per_sample = err.reshape(b, -1).mean(dim=1)
    if batch.weights is not None:
        per_sample = per_sample * batch.weights.to(per_sample)
    return per_sample.mean()
