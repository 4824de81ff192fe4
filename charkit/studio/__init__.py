"""charkit studio: review an episode in a browser and re-roll, repair or lock its takes.

    project.py          scan ROOT: characters, storyboards (episodes), render folders, imports, training runs
    files.py            opaque file ids (the only way a file leaves the server) and cached thumbnails
    storyboard_edit.py  round-trip storyboard edits (comments and layout kept), validated before they land
    actions.py          what the buttons do, as library functions: re-roll, edit, render, lock, import, repair
    jobs.py             the one worker queue (one GPU): background jobs, progress, one-line errors
    security.py         loopback by default, token off loopback, Host/Origin checks, CSRF, CSP
    app.py              the FastAPI routes over Jinja2 templates (autoescaped)
    cli.py              ``charkit studio [ROOT]``

The studio is a stage on top of the others: it calls ``render_storyboard`` and ``verify`` exactly as
the CLI does, and writes the same files (storyboard YAML, manifest.json, report.json), so the CLI and
the studio can work on one folder at once.
"""

from __future__ import annotations

__all__ = ["create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":  # FastAPI loads only when the app is wanted
        from .app import create_app

        return create_app
    raise AttributeError(name)


def serve(root, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None, settings=None) -> None:
    """Run the studio until interrupted (uvicorn, one process: the job queue lives in it).

    >>> serve("my-project", port=8765)  # doctest: +SKIP
    """
    import signal

    import uvicorn

    from .. import interrupts
    from .app import create_app

    app = create_app(root, host=host, port=port, token=token, settings=settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    uvicorn_exit = server.handle_exit

    def handle_exit(sig, frame) -> None:
        # Ctrl-C stops the server and, within one block, the job the worker is running (its finished images
        # stay); the server's shutdown then waits for that job instead of cutting it off mid-write.
        interrupts.request_stop(signal.Signals(sig).name)
        uvicorn_exit(sig, frame)

    server.handle_exit = handle_exit
    with interrupts.quiet_signals():
        server.run()
