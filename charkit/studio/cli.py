"""``charkit studio``: the click layer over :func:`charkit.studio.serve`."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_options import device_option, dtype_option
from ..errors import CharkitError


@click.command("studio")
@click.argument("root", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback (127.0.0.1, ::1, localhost) needs --token.",
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option(
    "--token",
    envvar="CHARKIT_STUDIO_TOKEN",
    metavar="TOKEN",
    help="Secret every browser must present once (open the printed address with ?token=...); required off "
    "loopback, at least 16 characters. Also read from $CHARKIT_STUDIO_TOKEN.",
)
@device_option()
@dtype_option("Precision of re-renders (auto: bf16 on GPUs that have it, else fp16; fp32 on CPU).")
def studio(root: Path, host: str, port: int, token: str | None, device: str, dtype: str):
    """Review a project in the browser: episodes, characters, training runs; re-roll, lock, import.

    ROOT is the project folder (characters/, storyboards, render folders, imports/); default: here.
    Re-renders run one at a time on one worker, through the same functions as `charkit render`.

    \b
      charkit studio                      # http://127.0.0.1:8765
      charkit studio my-show --port 9000
      charkit studio my-show --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    from ..devices import resolve_device, resolve_precision
    from . import serve
    from .actions import RenderSettings
    from .security import MIN_TOKEN, is_loopback

    if not root.is_dir():
        raise CharkitError(f"{root}: not a folder; pass the project folder (characters, storyboards, renders)")
    if token is not None and len(token) < MIN_TOKEN:
        raise CharkitError(f"--token: at least {MIN_TOKEN} characters (e.g. $(openssl rand -hex 16))")
    if not is_loopback(host) and token is None:
        raise CharkitError(
            f"--host {host} serves the studio beyond this machine: pass --token (at least {MIN_TOKEN} characters) "
            "so only browsers that know it get in"
        )
    device = resolve_device(device)
    settings = RenderSettings(device=device, dtype=resolve_precision(dtype, device))
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    click.echo(f"charkit studio on {root.resolve()}: {url}{'?token=<your token>' if token else ''} (Ctrl+C stops it)")
    serve(root, host=host, port=port, token=token, settings=settings)
    click.echo("charkit studio stopped", err=True)
