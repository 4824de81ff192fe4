"""Option definitions shared by every command, and click ParamTypes for charkit's value syntaxes.

Each command declares ``@device_option()``, ``@backend_option()``... instead of writing the same
option again, so the names, choices and help read the same everywhere (and in docs/cli.md). CLI
syntax (``LABEL=PATH``, ``[LABEL=]SOURCE``) is parsed here, into the structured values the library
takes: the library never parses command-line text.
"""

from __future__ import annotations

from pathlib import Path

import click

from .devices import PRECISIONS


def _backends() -> list[str]:
    from .identity import BACKENDS

    return list(BACKENDS)


class LabelPath(click.ParamType):
    """``LABEL=PATH`` -> ``(label, Path)`` (``--run midjourney=~/Downloads/mj``)."""

    name = "LABEL=PATH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        label, sep, path = str(value).partition("=")
        if not sep or not label or not path:
            self.fail(f"{value!r}: expected LABEL=PATH, e.g. midjourney=downloads/mj", param, ctx)
        return label, Path(path).expanduser()


class ModelSource(click.ParamType):
    """``[LABEL=]SOURCE`` -> a storyboard ``ModelSpec`` (family detected later)."""

    name = "[LABEL=]SOURCE"

    def convert(self, value, param, ctx):
        from .errors import CharkitError
        from .paths import check_name
        from .render.storyboard import ModelSpec

        if isinstance(value, ModelSpec):
            return value
        text = str(value)
        label, sep, source = text.partition("=")
        if sep and label and "/" not in label and not label.startswith("."):
            try:
                return ModelSpec(source=source, label=check_name(label, "--model label"))
            except CharkitError as e:
                self.fail(str(e), param, ctx)
        return ModelSpec(source=text)


LABEL_PATH = LabelPath()
MODEL_SOURCE = ModelSource()


def device_option(**kw):
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="cpu, cuda, cuda:1, mps (auto: cuda when available, else cpu).",
        **kw,
    )


def dtype_option(help_text: str = "Precision (auto: bf16 on GPUs that have it, else fp16; fp32 on CPU).", **kw):
    return click.option(
        "--dtype", type=click.Choice(list(PRECISIONS)), default="auto", show_default=True, help=help_text, **kw
    )


def backend_option(
    default: str | None = "auto", help_text: str = "Face model that scores identity.", *, multiple: bool = False, **kw
):
    """``--backend``; with ``multiple``, repeatable (several backends score together: a combined decision)."""
    several = " Repeat to score with several (every face gets each one's similarity and one combined decision)."
    return click.option(
        "--backend",
        type=click.Choice(_backends()),
        default=((default,) if default is not None else ()) if multiple else default,
        multiple=multiple,
        show_default=default is not None,
        help=f"{help_text} dlib and sface run offline from PyPI packages; insightface needs a pack (--face-models) "
        f"and is used only when named; auto: dlib and sface, two unrelated models.{several if multiple else ''}",
        **kw,
    )


def face_models_option(**kw):
    return click.option(
        "--face-models",
        type=click.Path(path_type=str),
        default=None,
        metavar="DIR",
        help="insightface pack folder or root (default: $CHARKIT_FACE_MODELS, then ~/.insightface/models).",
        **kw,
    )


def allow_pickle_option(**kw):
    return click.option(
        "--allow-pickle-weights",
        is_flag=True,
        help="Allow pickle weight files (.ckpt/.pt/.bin/.pth), which can run code when loaded. Only for files you trust.",
        **kw,
    )


def quiet_option(**kw):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.", **kw)
