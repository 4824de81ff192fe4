"""The click layer: thin wrappers over the library. Subcommands load lazily so that
``charkit verify`` does not pay for importing diffusers.

Every command runs inside the same frame (:meth:`LazyGroup.invoke`): Ctrl-C / SIGTERM stop at the next
step boundary (exit 130, :mod:`charkit.interrupts`), bad input and a bad environment (a full disk, a
folder that cannot be written) are one ``Error:`` line with exit code 2, charkit's warnings are one
``warning:`` line, and third-party warnings and logs also go to the per-run log file (``-q`` keeps
them off the terminal).
"""

from __future__ import annotations

import importlib

import click

from . import __version__
from .errors import CharkitError, StopRequested

# command name -> "module:attribute" (each module owns its click command)
COMMANDS = {
    "character": "charkit.character_cli:character",
    "verify": "charkit.verify.cli:verify",
    "calibrate": "charkit.verify.cli:calibrate",
    "tiny-model": "charkit.families.cli:tiny_model",
    "render": "charkit.render.cli:render",
    "repair": "charkit.repair.cli:repair",
    "prep": "charkit.dataset.cli:prep",
    "train": "charkit.train.cli:train",
    "demo": "charkit.demo:demo",
    "studio": "charkit.studio.cli:studio",
}


class UserError(click.ClickException):
    """A :class:`CharkitError` as click shows it: ``Error: <one line>`` (one per problem), exit code 2
    (a :class:`~charkit.errors.StopRequested`: ``charkit: interrupted ...``, exit code 130)."""

    exit_code = 2

    def __init__(self, error: CharkitError):
        self.lines = error.lines() if hasattr(error, "lines") else [str(error)]
        self.exit_code = error.exit_code
        self.prefix = "charkit: " if isinstance(error, StopRequested) else "Error: "
        super().__init__(self.lines[0] if len(self.lines) == 1 else f"{len(self.lines)} problems")

    def show(self, file=None) -> None:
        for line in self.lines:
            click.echo(f"{self.prefix}{line}", err=True, file=file)


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(n for n in COMMANDS if self._spec_exists(n))

    @staticmethod
    def _spec_exists(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def invoke(self, ctx):
        # User errors anywhere below become one line on stderr and exit code 2 (also under CliRunner).
        from .cli_options import run_log
        from .environment import environment_error
        from .interrupts import Interrupted, handle_interrupts

        try:
            with handle_interrupts(), run_log(ctx.invoked_subcommand or "charkit"):
                return super().invoke(ctx)
        except CharkitError as e:
            raise UserError(e) from None
        except click.UsageError as e:  # a bad option value is one line too (click adds usage and a hint)
            if e.ctx is None:
                raise
            raise UserError(CharkitError(f"{e.format_message()} (see `{e.ctx.command_path} --help`)")) from None
        except (Interrupted, KeyboardInterrupt) as e:  # stopped outside a stage's own step loop (or a second Ctrl-C)
            name = getattr(e, "signal_name", "SIGINT")
            raise UserError(StopRequested(f"interrupted ({name}); complete outputs were kept: run it again")) from None
        except Exception as e:
            problem = environment_error(e)  # a full disk, a read-only or unwritable place: one line
            if problem is None:
                raise
            raise UserError(problem) from None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._spec_exists(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="charkit")
def cli():
    """charkit: consistent characters, measured.

    \b
    prep -> train -> render -> verify:
      charkit character init alice --refs ~/photos/alice
      charkit verify renders/ --character characters/alice
    """


def main(argv=None):
    """Console entry point."""
    cli.main(args=argv, prog_name="charkit")


if __name__ == "__main__":
    main()
