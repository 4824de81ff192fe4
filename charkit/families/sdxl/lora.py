"""SDXL LoRA training: two-encoder text conditioning with size micro-conditioning, and the loss.

As in diffusers' ``train_dreambooth_lora_sdxl.py``: DDPM noise at a uniform random timestep,
epsilon or v-prediction from the scheduler config, the UNet conditioned on both CLIP encoders'
penultimate hidden states, the pooled text embedding and the ``time_ids`` (original size, crop
corner, target size) of each sample. Random draws use the caller's ``generator``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_scheduler(pipe):
    """A DDPM scheduler with the model's training schedule (a copy: sampling mutates the pipeline's own)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def prediction_type(scheduler) -> str:
    return scheduler.config.get("prediction_type", "epsilon")


def encode_text(pipe, captions: list[str], *, device) -> dict[str, torch.Tensor]:
    """Both encoders as the pipeline runs them: concatenated penultimate states plus the pooled embedding."""
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(captions, None, device, 1, False)
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def scale_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    return latents * pipe.vae.config.scaling_factor


def time_ids(sizes: list[tuple[int, int]], crops: list[tuple[int, int]], *, device, dtype) -> torch.Tensor:
    """SDXL micro-conditioning per sample: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    Training images are prepped at their target size, so original = target, like the pipeline's default.
    """
    rows = [[h, w, ct, cl, h, w] for (h, w), (ct, cl) in zip(sizes, crops)]
    return torch.tensor(rows, device=device, dtype=dtype)


def training_loss(pipe, denoiser, scheduler, batch, *, loss_cfg, generator: torch.Generator) -> torch.Tensor:
    latents = batch.latents
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if loss_cfg.noise_offset:
        noise = noise + loss_cfg.noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=generator).to(
            latents
        )
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {kind!r} in the scheduler config")
    added = {
        "text_embeds": batch.text["pooled_prompt_embeds"],
        "time_ids": time_ids(batch.sizes, batch.crops, device=latents.device, dtype=batch.text["prompt_embeds"].dtype),
    }
    pred = denoiser(noisy, timesteps, batch.text["prompt_embeds"], added_cond_kwargs=added, return_dict=False)[0]
    pred, target = pred.float(), target.float()
    if not loss_cfg.snr_gamma:
        return F.mse_loss(pred, target, reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=loss_cfg.snr_gamma)
    weights = weights / snr if kind == "epsilon" else weights / (snr + 1)
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=list(range(1, pred.ndim)))
    return (per_sample * weights).mean()
