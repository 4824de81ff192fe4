"""Docs cannot drift: docs/cli.md is generated from the click commands, and every CLI option and
every config field (character.toml, storyboard YAML, training presets) is documented."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from charkit import configdoc
from charkit.cli import cli
from charkit.clidoc import _walk, render

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))


def test_cli_reference_is_current():
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == render(), "run: python -m charkit.clidoc > docs/cli.md"


def test_config_reference_is_current():
    assert (DOCS / "config.md").read_text(encoding="utf-8") == configdoc.render(), (
        "run: python -m charkit.configdoc > docs/config.md"
    )


def test_every_cli_option_is_documented_with_help():
    ref = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = []
    for path, cmd, ctx in _walk(cli, ["charkit"], click.Context(cli, info_name="charkit")):
        for p in cmd.get_params(ctx):
            if isinstance(p, click.Option) and "--help" not in p.opts:
                if not p.help:
                    missing.append(f"{' '.join(path)} {p.opts[0]}: no help text")
                if f"`{p.opts[0]}`" not in ref:
                    missing.append(f"{' '.join(path)} {p.opts[0]}: not in docs/cli.md")
    assert missing == []


def _config_models():
    for name, _, _ in configdoc.SECTIONS:
        yield from configdoc.models_of(name)


@pytest.mark.parametrize("model", list(_config_models()), ids=lambda m: f"{m.__module__}.{m.__name__}")
def test_every_config_field_has_help_and_docs(model):
    text = docs_text()
    problems = []
    for field, info in model.model_fields.items():
        key = info.alias or field
        if not (info.description or "").strip():
            problems.append(f"{model.__name__}.{field}: no description")
        if f"`{key}`" not in text and f"{key} =" not in text and f"{key}:" not in text:
            problems.append(f"{model.__name__}.{field}: not documented in docs/")
    assert problems == []


def test_stage_file_field_tables_are_current():
    from charkit import stagefiles

    text = (DOCS / "formats.md").read_text(encoding="utf-8")
    assert stagefiles.update_docs(text) == text, "run: python -m charkit.stagefiles docs/formats.md"
