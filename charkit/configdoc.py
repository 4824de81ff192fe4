"""Generate docs/config.md from the typed config models (``python -m charkit.configdoc > docs/config.md``).

Field help text lives once, in the pydantic ``Field(description=...)``; the CLI help, validation
errors and this reference all read it. tests/test_docs.py fails when docs/config.md is stale.
"""

from __future__ import annotations

import importlib
import inspect

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

#: (module, title, file it describes)
SECTIONS = [
    ("charkit.character", "character.toml", "characters/<name>/character.toml"),
    ("charkit.render.storyboard", "Storyboard YAML", "examples/episode.yaml"),
    ("charkit.train.config", "Training presets", "training/<family>-lora.toml"),
]


def models_of(module_name: str) -> list[type[BaseModel]]:
    mod = importlib.import_module(module_name)
    found = [
        obj
        for _, obj in inspect.getmembers(mod, inspect.isclass)
        if issubclass(obj, BaseModel)
        and obj is not BaseModel
        and obj.__module__ == mod.__name__
        and not obj.__name__.startswith("_")
        and obj.model_fields
    ]
    # source order reads best (top-level model last in most modules)
    return sorted(found, key=lambda c: inspect.getsourcelines(c)[1])


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "")
    for mod in ("charkit.render.storyboard.", "charkit.train.config.", "charkit.character.", "pathlib."):
        text = text.replace(mod, "")
    return text.replace("NoneType", "None").replace("|", "\\|")


def _default(info) -> str:
    if info.default is not PydanticUndefined:
        return f"`{info.default!r}`" if info.default not in ("",) else '`""`'
    if info.default_factory is not None:
        try:
            return f"`{info.default_factory()!r}`"
        except TypeError:
            return "(computed)"
    return "**required**"


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the typed config models by `python -m charkit.configdoc > docs/config.md`; "
        "do not edit by hand. Examples and explanations: [formats.md](formats.md).",
        "",
    ]
    for module, title, where in SECTIONS:
        out += [f"## {title}", "", f"File: `{where}` (model classes in `{module}`).", ""]
        for model in models_of(module):
            doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
            out += [f"### `{model.__name__}`", ""]
            if doc:
                out += [doc, ""]
            out += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
            for name, info in model.model_fields.items():
                key = info.alias or name
                desc = " ".join((info.description or "").split()).replace("|", "\\|")
                out.append(f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | {desc} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
