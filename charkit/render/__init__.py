"""Scene-series rendering: storyboard YAML -> PNGs with metadata + manifest.json.

    storyboard.py    typed storyboard models (load_storyboard)
    plan.py          check_inputs: storyboard -> RenderPlan of scene jobs (inputs_hash per job)
    jobs.py          the steps of plan_job: one scene on one model -> SceneJob (sampler, clip skip, hires, ...)
    lifecycle.py     render_storyboard and its named steps (pending_jobs, render_batch, record, render_jobs, ...)
    steps.py         the steps that touch the pipeline: load, condition, denoise, hires (offload re-arm)
    records.py       what a scene records: manifest record + settings, A1111 `parameters` fields
    scales.py        context managers for per-scene LoRA / IP-Adapter state (FaceID's own LoRA included)
    conditioning.py  control maps (controlnet_aux), IP-Adapter images, FaceID embeddings
    candidates.py    best-of-N seeds, batching and selection
    presets.py       post-processing presets (lifelike film grain)
    outputs.py       deterministic PNGs with A1111 `parameters` and a `charkit` JSON chunk
    manifest.py      manifest.json records, resume checks
    distributed.py   accelerate split/merge across processes (and nodes); --shard K/N shares
    cli.py           `charkit render`

Heavy imports (torch, diffusers) happen on first use of the lifecycle, not on import.
"""

from __future__ import annotations

from .storyboard import Storyboard, load_storyboard

_LAZY = {
    "render_storyboard": "lifecycle",
    "RenderResult": "lifecycle",
    "SceneResult": "lifecycle",
    "check_inputs": "plan",
    "RenderPlan": "plan",
    "read_png_metadata": "outputs",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = ["Storyboard", "load_storyboard", *_LAZY]
