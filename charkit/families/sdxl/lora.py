"""SDXL LoRA training: two-encoder text conditioning with size micro-conditioning, and the loss.

As in diffusers' ``train_dreambooth_lora_sdxl.py``: DDPM noise at a uniform random timestep,
epsilon or v-prediction from the scheduler config, the UNet conditioned on both CLIP encoders'
penultimate hidden states, the pooled text embedding and the ``time_ids`` (original size, crop
corner, target size) of each sample; the original size is the crop's size in its source photo, from
prep's records. Random draws use the caller's ``generator``.
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


def text_shapes(denoiser_config, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of what :func:`encode_text` returns (the memory plan runs the loss on empty tensors of them)."""
    c = denoiser_config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return {"prompt_embeds": (batch_size, 77, c.cross_attention_dim), "pooled_prompt_embeds": (batch_size, pooled)}


def scale_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    return latents * pipe.vae.config.scaling_factor


def time_ids(
    sizes: list[tuple[int, int]],
    crops: list[tuple[int, int]],
    *,
    device,
    dtype,
    originals: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """SDXL micro-conditioning per sample: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    ``originals``: each crop's size in its source photo (prep's ``crop_box``), so an upscaled crop says it came
    from fewer pixels, as SDXL was trained (and at inference original = target asks for full detail). Without
    them original = target, the pipeline's default.

    >>> time_ids([(64, 64)], [(0, 0)], device="cpu", dtype=torch.float32, originals=[(32, 40)]).tolist()
    [[32.0, 40.0, 0.0, 0.0, 64.0, 64.0]]
    """
    originals = originals or sizes
    rows = [[oh, ow, ct, cl, h, w] for (h, w), (ct, cl), (oh, ow) in zip(sizes, crops, originals)]
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
        "time_ids": time_ids(
            batch.sizes,
            batch.crops,
            device=latents.device,
            dtype=batch.text["prompt_embeds"].dtype,
            originals=batch.originals,
        ),
    }
    pred = denoiser(noisy, timesteps, batch.text["prompt_embeds"], added_cond_kwargs=added, return_dict=False)[0]
    return weighted_mse(pred.float(), target.float(), scheduler, timesteps, kind, loss_cfg.snr_gamma, batch.weights)


# Copied from charkit.families.sd15.lora.weighted_mse
def weighted_mse(pred, target, scheduler, timesteps, kind: str, snr_gamma: float, sample_weights=None) -> torch.Tensor:
    """MSE with Min-SNR-gamma weighting (Hang et al. 2023, as in the diffusers examples) and per-sample weights."""
    if not snr_gamma and sample_weights is None:
        return F.mse_loss(pred, target, reduction="mean")
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=list(range(1, pred.ndim)))
    if snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        weights = torch.clamp(snr, max=snr_gamma)
        per_sample = per_sample * (weights / snr if kind == "epsilon" else weights / (snr + 1))
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample)
    return per_sample.mean()
