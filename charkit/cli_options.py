"""Option definitions shared by every command, and click ParamTypes for charkit's value syntaxes.

Each command declares ``@device_option()``, ``@backend_option()``... instead of writing the same
option again, so the names, choices and help read the same everywhere (and in docs/cli.md). CLI
syntax (``LABEL=PATH``, ``[LABEL=]SOURCE``) is parsed here, into the structured values the library
takes: the library never parses command-line text.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.abc
import importlib.util
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator
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


class Similarity(click.ParamType):
    """A similarity threshold: a number strictly between 0 and 1 (every backend maps its metric onto that scale;
    0 or less passes every face, 1 or more none)."""

    name = "FLOAT"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number; give a similarity between 0 and 1, e.g. 0.4", param, ctx)
        if not math.isfinite(number) or not 0.0 < number < 1.0:
            self.fail(
                f"{value!r}: a similarity threshold is a number between 0 and 1 (see `charkit calibrate` for one "
                "measured on your characters)",
                param,
                ctx,
            )
        return number


LABEL_PATH = LabelPath()
MODEL_SOURCE = ModelSource()
SIMILARITY = Similarity()


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
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        callback=_set_quiet,
        help="No progress bars, no library warnings on the terminal (they still go to the run log, see "
        "$CHARKIT_LOG_FILE); charkit's own warnings and errors still show.",
        **kw,
    )


def _set_quiet(ctx, param, value):
    if value:
        quiet_run()
    return value


def quiet_run() -> None:
    """What ``-q`` does, for the command running now: library progress bars and warnings go to the run log only
    (restored when the command ends)."""
    if _RUN is not None:
        _RUN.set_quiet()


# -- the per-run log -------------------------------------------------------------------------

#: libraries that keep their own stderr handler (and progress-bar switch) in ``<lib>.utils.logging``
_LIBRARY_LOGGING = ("diffusers.utils.logging", "transformers.utils.logging")
_KEEP_LOGS = 20


class _LazyFileHandler(logging.FileHandler):
    """Opens the log file on its first record; a log that cannot be written never breaks the run."""

    def __init__(self, path: Path):
        self.records = 0
        super().__init__(path, encoding="utf-8", errors="backslashreplace", delay=True)

    def emit(self, record):
        try:
            if self.stream is None:
                Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
            self.records += 1
            super().emit(record)
        except Exception:
            self.close()
            self.setLevel(logging.CRITICAL + 1)  # stop trying

    def handleError(self, record):
        self.setLevel(logging.CRITICAL + 1)


class _OnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``callback(module)`` right after one of ``names`` is imported (to re-route its log handler)."""

    def __init__(self, names, callback):
        self.names, self.callback = set(names), callback
        self._loaders: dict = {}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names or fullname in self._loaders:
            return None
        self._loaders[fullname] = None  # find the real spec without finding ourselves again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            del self._loaders[fullname]
        if spec is None or spec.loader is None:
            return None
        self._loaders[fullname] = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loaders[spec.name].create_module(spec)

    def exec_module(self, module):
        loader = self._loaders.pop(module.__name__)
        loader.exec_module(module)
        self.names.discard(module.__name__)
        self.callback(module)


class RunLog:
    """Warnings and library logs of one command: always into the log file; on the terminal unless quiet."""

    def __init__(self, command: str, path: Path | None):
        self.command, self.path, self.quiet = command, path, False
        self.file = _LazyFileHandler(path) if path is not None else logging.NullHandler()
        self.file.setLevel(logging.INFO)
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.terminal = logging.StreamHandler()
        self.terminal.setLevel(logging.WARNING)
        self._libraries: list = []
        self._shown: set[str] = set()  # CharkitWarning lines already printed

    def attach_library(self, module) -> None:
        module._configure_library_root_logger()
        logger = module._get_library_root_logger()
        logger.addHandler(self.file)
        self._libraries.append((module, logger.level))
        if logger.level > logging.WARNING:  # the log keeps warnings even where verbosity was turned down
            logger.setLevel(logging.WARNING)
        if self.quiet:
            self._quiet_library(module)

    @staticmethod
    def _quiet_library(module) -> None:
        if module._default_handler is not None:
            module._default_handler.setLevel(logging.ERROR)
        module.disable_progress_bar()

    def to_file(self, name: str, text: str) -> None:
        """A WARNING record into the log file only (the terminal line is printed by the caller)."""
        self.file.handle(
            logging.makeLogRecord({"name": name, "levelno": logging.WARNING, "levelname": "WARNING", "msg": text})
        )

    def set_quiet(self) -> None:
        self.quiet = True
        self._env = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
        if "huggingface_hub" in sys.modules:
            sys.modules["huggingface_hub"].utils.disable_progress_bars()
        self.terminal.setLevel(logging.CRITICAL + 1)
        for module, _ in self._libraries:
            self._quiet_library(module)

    def restore(self) -> None:
        """Libraries' handlers, progress bars and the environment as they were before the command."""
        if self.quiet:
            if self._env is None:
                os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
            else:
                os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = self._env
        for module, level in self._libraries:
            module._get_library_root_logger().removeHandler(self.file)
            module._get_library_root_logger().setLevel(level)
            if self.quiet:
                if module._default_handler is not None:
                    module._default_handler.setLevel(logging.NOTSET)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # huggingface_hub warns when its own variable still disables bars
                    module.enable_progress_bar()

    def showwarning(self, message, category, filename, lineno, file=None, line=None):
        from .errors import CharkitWarning

        text = " ".join(str(message).split())
        if issubclass(category, CharkitWarning):
            if text in self._shown:  # one line per distinct warning per command (a stage re-planning says it again)
                return
            self._shown.add(text)
            click.echo(f"warning: {text}", err=True)
            self.to_file("charkit", text)
            return
        self.to_file("py.warnings", f"{filename}:{lineno}: {category.__name__}: {text}")
        if not self.quiet:
            click.echo(warnings.formatwarning(message, category, filename, lineno, line).rstrip(), err=True)


_RUN: RunLog | None = None


def log_path(command: str) -> Path | None:
    """``$CHARKIT_LOG_FILE``, else ``<cache>/logs/<command>-<time>-<pid>.log`` (written only when there is something)."""
    from .paths import default_cache_dir

    env = os.environ.get("CHARKIT_LOG_FILE")
    if env:
        return Path(env).expanduser()
    folder = default_cache_dir() / "logs"
    with contextlib.suppress(OSError):  # keep the newest logs only
        for old in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-_KEEP_LOGS]:
            old.unlink()
    return folder / f"{command}-{_dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"


@contextlib.contextmanager
def run_log(command: str) -> Iterator[RunLog]:
    """Route warnings and library logs of one command (see :class:`RunLog`); restores everything after."""
    global _RUN
    if _RUN is not None:  # nested (a command calling another): one log
        yield _RUN
        return
    run = RunLog(command, log_path(command))
    root = logging.getLogger()
    hook = _OnImport([m for m in _LIBRARY_LOGGING if m not in sys.modules], run.attach_library)
    old_show, old_level = warnings.showwarning, root.level
    root.addHandler(run.file)
    root.addHandler(run.terminal)
    root.setLevel(min(old_level or logging.WARNING, logging.INFO))
    warnings.showwarning = run.showwarning
    sys.meta_path.insert(0, hook)
    for name in _LIBRARY_LOGGING:
        if name in sys.modules:
            run.attach_library(sys.modules[name])
    _RUN = run
    try:
        yield run
    finally:
        _RUN = None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(hook)
        run.restore()
        warnings.showwarning = old_show
        root.removeHandler(run.file)
        root.removeHandler(run.terminal)
        root.setLevel(old_level)
        run.file.close()
