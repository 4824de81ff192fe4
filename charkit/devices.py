"""One device and precision vocabulary for every stage.

Devices are ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and ``auto`` (CUDA when available, else CPU).
Precisions are ``fp32``, ``fp16``, ``bf16`` and ``auto`` (bf16 on GPUs that have it, fp16 on other
GPUs, fp32 on a CPU); the spellings of torch (``float16``), accelerate (``no``) and the older
``half`` are accepted as aliases. Library functions take resolved values; the CLI passes ``auto``
through :func:`resolve_device` and :func:`resolve_precision`.
"""

from __future__ import annotations

import re

from .errors import CharkitError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "no": "fp32",  # accelerate's mixed_precision="no"
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
}
_TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is validated.

    >>> resolve_device("cpu")
    'cpu'
    """
    text = "auto" if device is None else str(device).strip().lower()
    if text == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not _DEVICE.match(text):
        raise CharkitError(f"--device {device!r}: not a device; use auto, cpu, cuda, cuda:N or mps")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CharkitError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return text


def precision_name(precision: str) -> str:
    """The canonical name (``fp32`` / ``fp16`` / ``bf16``) of a precision or one of its aliases.

    >>> precision_name("bfloat16")
    'bf16'
    """
    text = str(precision).removeprefix("torch.").strip().lower()
    if text not in _ALIASES:
        raise CharkitError(f"--dtype {precision}: unknown precision; choose {', '.join(PRECISIONS)}")
    return _ALIASES[text]


def resolve_precision(precision: str | None, device: str) -> str:
    """``auto`` -> bf16 / fp16 on a GPU, fp32 on a CPU; a named precision is checked against the device.

    >>> resolve_precision("auto", "cpu")
    'fp32'
    """
    text = "auto" if precision is None else str(precision)
    if text == "auto":
        if not str(device).startswith("cuda"):
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    name = precision_name(text)
    if name == "bf16" and str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise CharkitError("--dtype bf16: this GPU has no bfloat16 support; use --dtype fp16")
    return name


def torch_name(precision: str) -> str:
    """torch's name of a precision (``float16``): what manifests and PNG metadata record.

    >>> torch_name("fp16")
    'float16'
    """
    return _TORCH_NAMES[precision_name(precision)]


def torch_dtype(precision: str):
    """The ``torch.dtype`` of a precision."""
    import torch

    return getattr(torch, torch_name(precision))


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for a device (face models run on ONNX).

    >>> onnx_providers("cpu")
    ['CPUExecutionProvider']
    """
    if str(device).startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if str(device) in ("cpu", "mps"):
        return ["CPUExecutionProvider"]
    raise CharkitError(f"--device {device!r}: use cpu or cuda")
