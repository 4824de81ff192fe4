"""Generate docs/cli.md from the click commands themselves (``python -m charkit.clidoc > docs/cli.md``).

tests/test_docs.py fails when docs/cli.md is stale, so the reference can never drift from the CLI.
"""

from __future__ import annotations

import click

from .cli import cli


def _walk(cmd: click.Command, path: list[str], ctx: click.Context):
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, path + [name], click.Context(sub, info_name=name, parent=ctx))


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _help_blocks(text: str) -> list[str]:
    """click help: plain paragraphs as text, ``\\b`` (no-rewrap) paragraphs as code blocks."""
    import inspect

    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b\n"):
            out += ["```", para[2:].rstrip(), "```", ""]
        else:
            out += [" ".join(para.split()), ""]
    return out


def render() -> str:
    root = click.Context(cli, info_name="charkit")
    out = [
        "# CLI reference",
        "",
        "Generated from the click commands by `python -m charkit.clidoc > docs/cli.md`; do not edit by hand.",
        "",
    ]
    for path, cmd, ctx in _walk(cli, ["charkit"], root):
        out += [f"## `{' '.join(path)}`", ""]
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        out += ["```", f"{' '.join(path)} {usage}".rstrip(), "```", ""]
        if cmd.help:
            out += _help_blocks(cmd.help)
        opts = [
            p for p in cmd.get_params(ctx) if isinstance(p, click.Option) and not p.hidden and "--help" not in p.opts
        ]
        if opts:
            out += ["| option | help | default |", "| --- | --- | --- |"]
            for p in opts:
                names = ", ".join(f"`{n}`" for n in p.opts + p.secondary_opts)
                if isinstance(p.type, click.Choice):
                    names += " (" + " \\| ".join(map(str, p.type.choices)) + ")"
                value = p.get_default(ctx, call=False)
                unset = value in (None, (), False, "") or callable(value) or "UNSET" in repr(value)
                default = "" if unset else f"`{value}`"
                out.append(f"| {names} | {_cell(p.help)} | {default} |")
            out.append("")
        args = [p for p in cmd.get_params(ctx) if isinstance(p, click.Argument)]
        if args:
            out += ["Arguments: " + ", ".join(f"`{a.human_readable_name}`" for a in args), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
