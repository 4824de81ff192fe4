"""Fitting a training run on one GPU: a quantised frozen base, encoders off the GPU, block swap.

* **Quantised base** (``memory.base_quantization``): the denoiser loads through diffusers' quantisation
  backend (``PipelineQuantizationConfig`` with a ``BitsAndBytesConfig``: NF4 with double quantisation and
  the training dtype as compute dtype, or LLM.int8), as the diffusers QLoRA examples do. The LoRA layers
  stay fp32 on top of the 4/8-bit weights. :func:`quantization_spec` is the pure description (testable
  anywhere); :func:`quantization_config` builds the diffusers object (needs bitsandbytes).
* **Encoders off the GPU** (``memory.offload_encoders``): the text encoders and the VAE run on the GPU to
  fill the caches, then move to the CPU; probes render from cached prompt embeddings, and the VAE comes
  back only while they decode (:func:`on_device`).
* **Block swap** (``memory.block_swap``): the frozen weights of the last N transformer blocks live on the
  CPU; a forward pre-hook copies a block's weights to the GPU just before it runs (forward, and the
  recomputation of gradient checkpointing in backward) and the forward hook drops the copy after. LoRA
  weights never move, so the optimizer never sees a device change.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..errors import CharkitError

#: what each base_quantization means for diffusers (backend name, BitsAndBytesConfig keywords)
QUANTIZATIONS = {
    "nf4": (
        "bitsandbytes_4bit",
        {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    ),
    "int8": ("bitsandbytes_8bit", {"load_in_8bit": True}),
}
#: bytes per quantised Linear weight (NF4: 4 bits + double-quantised absmax per 64; int8: 1 byte + row scales)
QUANT_BYTES = {"none": None, "nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0}


@dataclass(frozen=True)
class QuantizationSpec:
    """How the frozen denoiser is quantised when it loads (what :func:`quantization_config` hands diffusers)."""

    method: str  # nf4 | int8
    backend: str  # diffusers' quant_backend name
    component: str  # pipeline component (the denoiser)
    kwargs: dict = field(default_factory=dict)


def quantization_spec(preset, family_spec, dtype: torch.dtype) -> QuantizationSpec | None:
    """The quantisation the preset asks for, or None.

    >>> from charkit.families import get_spec
    >>> from charkit.train.config import parse_preset
    >>> p = parse_preset({"family": "flux", "memory": {"base_quantization": "nf4"}})
    >>> q = quantization_spec(p, get_spec("flux"), torch.bfloat16)
    >>> q.backend, q.component, q.kwargs["bnb_4bit_quant_type"], q.kwargs["bnb_4bit_compute_dtype"]
    ('bitsandbytes_4bit', 'transformer', 'nf4', torch.bfloat16)
    """
    method = preset.memory.base_quantization
    if method == "none":
        return None
    backend, kwargs = QUANTIZATIONS[method]
    kwargs = dict(kwargs)
    if method == "nf4":
        kwargs["bnb_4bit_compute_dtype"] = dtype
    return QuantizationSpec(method=method, backend=backend, component=family_spec.denoiser, kwargs=kwargs)


def quantization_config(spec: QuantizationSpec):
    """diffusers' ``PipelineQuantizationConfig`` quantising only ``spec.component`` (needs bitsandbytes)."""
    from diffusers import BitsAndBytesConfig
    from diffusers.quantizers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping={spec.component: BitsAndBytesConfig(**spec.kwargs)})


def check_quantization(preset, device: torch.device) -> str | None:
    """A one-line error when quantisation cannot run on this CUDA machine; a note when the device is the CPU."""
    import importlib.util

    method = preset.memory.base_quantization
    if method == "none":
        return None
    if device.type != "cuda":
        return f"memory.base_quantization {method} needs a CUDA GPU: the base stays unquantised on {device.type}"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise CharkitError(
            f"memory.base_quantization {method!r} needs bitsandbytes: pip install 'charkit[gpu]', or set it to 'none'"
        )
    return None


def is_quantized(module) -> bool:
    """True for a bitsandbytes-quantised model (what diffusers' own pipeline.to() checks)."""
    from diffusers.quantizers.bitsandbytes.utils import _check_bnb_status

    return bool(any(_check_bnb_status(module)))


@contextlib.contextmanager
def on_device(modules: list, device: torch.device, home: torch.device):
    """Move ``modules`` to ``device`` for the duration, then back to ``home`` (no-op when they are equal)."""
    if device == home:
        yield
        return
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to(home)
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- block swap


def swap_blocks(denoiser) -> list[torch.nn.Module]:
    """The transformer blocks of an SD3/Flux denoiser in execution order (single blocks run last in Flux)."""
    blocks = list(getattr(denoiser, "transformer_blocks", [])) + list(
        getattr(denoiser, "single_transformer_blocks", [])
    )
    if not blocks:
        raise CharkitError("memory.block_swap: this denoiser has no transformer blocks; set memory.block_swap = 0")
    return blocks


class BlockSwap:
    """Keep the frozen weights of ``count`` blocks on the CPU and copy each to ``device`` only while it runs.

    >>> swap = BlockSwap(pipe.transformer, 20, torch.device("cuda"))  # doctest: +SKIP
    """

    def __init__(self, denoiser, count: int, device: torch.device):
        blocks = swap_blocks(denoiser)
        if count > len(blocks):
            raise CharkitError(
                f"memory.block_swap = {count}: this model has {len(blocks)} transformer blocks; use at most that"
            )
        self.device = torch.device(device)
        self.blocks = blocks[len(blocks) - count :]
        self.onloads = 0
        self._home: dict[int, list[tuple[torch.nn.Module, str, torch.Tensor]]] = {}
        self._hooks = []
        pin = self.device.type == "cuda"
        for b in self.blocks:
            frozen = []
            for mod in b.modules():
                for name, t in list(mod._parameters.items()) + list(mod._buffers.items()):
                    if t is None or (isinstance(t, torch.nn.Parameter) and t.requires_grad):
                        continue  # LoRA weights stay on the device
                    cpu = t.data.to("cpu")
                    frozen.append((mod, name, cpu.pin_memory() if pin else cpu))
            self._home[id(b)] = frozen
            self._offload(b)
            self._hooks.append(b.register_forward_pre_hook(self._pre))
            self._hooks.append(b.register_forward_hook(self._post))

    def _set(self, block, onload: bool) -> None:
        for mod, name, cpu in self._home[id(block)]:
            data = cpu.to(self.device, non_blocking=True) if onload else cpu
            t = mod._parameters.get(name) if name in mod._parameters else mod._buffers[name]
            t.data = data

    def _offload(self, block) -> None:
        self._set(block, onload=False)

    def _pre(self, block, args):
        self.onloads += 1
        self._set(block, onload=True)

    def _post(self, block, args, output):
        # Autograd keeps the device copies it saved until this block's backward; only the references go here.
        self._offload(block)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        for b in self.blocks:
            self._set(b, onload=True)
        self._hooks = []


def place_denoiser(denoiser, device: torch.device, *, block_swap: int = 0) -> BlockSwap | None:
    """Move the denoiser to ``device`` block by block (never all of it at once), leaving the frozen weights of
    the last ``block_swap`` blocks on the CPU behind a :class:`BlockSwap`. A quantised denoiser is already there."""
    if is_quantized(denoiser):
        denoiser.to(device)  # bitsandbytes moves its quantised weights itself (a no-op where they already are)
        return None
    swapped = {id(b) for b in swap_blocks(denoiser)[-block_swap:]} if block_swap else set()
    for child in denoiser.children():
        if isinstance(child, torch.nn.ModuleList) and swapped:
            for b in child:
                if id(b) not in swapped:
                    b.to(device)
                else:  # LoRA weights (and nothing else) to the device
                    for p in b.parameters():
                        if p.requires_grad:
                            p.data = p.data.to(device)
        else:
            child.to(device)
    for t in list(denoiser._parameters.values()) + list(denoiser._buffers.values()):
        if t is not None:
            t.data = t.data.to(device)
    return BlockSwap(denoiser, block_swap, device) if block_swap else None
