"""Ctrl-C and SIGTERM: stop at the next step boundary, keep only complete outputs, say how to resume.

The CLI runs every command inside :func:`handle_interrupts`: the first SIGINT or SIGTERM only sets
a flag (and says so on stderr); a second one stops at once (``KeyboardInterrupt``). Long loops
check the flag at their step boundaries with :func:`raise_if_stopped`, which raises
:class:`Interrupted`. A denoiser (and the VAE) carries the same check as forward pre-hooks on itself
and its attention, resnet and transformer blocks (:func:`guard`), so a pipeline call ends within
seconds however long one denoising step takes. The stage that owns the loop turns
:class:`Interrupted` into a :class:`~charkit.errors.StopRequested` naming what was finished; the CLI
prints it and exits 130.

``Interrupted`` is a ``BaseException`` (like ``KeyboardInterrupt``): no ``except Exception`` on the
way up swallows it, while ``finally`` blocks and context managers still clean up.

>>> with handle_interrupts():
...     stop_requested()
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from .errors import StopRequested

__all__ = [
    "Interrupted",
    "StopRequested",
    "deferred",
    "guard",
    "handle_interrupts",
    "raise_if_stopped",
    "request_stop",
    "step_callback",
    "stop_requested",
]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop was requested; raised at a step boundary. Stages turn it into StopRequested with what they finished."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


class _State:
    requested: str | None = None  # the signal's name once a stop is requested
    depth = 0  # nesting of handle_interrupts
    deferred = 0  # nesting of deferred()


_state = _State()


def stop_requested() -> str | None:
    """The name of the signal that asked to stop (``"SIGINT"``, ``"SIGTERM"``), or None."""
    return _state.requested


def request_stop(signal_name: str = "SIGINT") -> None:
    """Ask running loops to stop at their next step boundary (what the signal handler does)."""
    _state.requested = signal_name


def raise_if_stopped() -> None:
    """Raise :class:`Interrupted` when a stop was requested (outside :func:`deferred` sections)."""
    if _state.requested is not None and _state.deferred == 0:
        raise Interrupted(_state.requested)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section that finishes even after a stop request (a checkpoint and its evaluation); checks resume after it."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _state.requested is not None:
        raise KeyboardInterrupt  # the second signal: stop now
    _state.requested = name
    print(f"\ncharkit: {name}: stopping at the next step ({name} again stops at once)", file=sys.stderr)


@contextlib.contextmanager
def quiet_signals() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM only request a stop, silently: for a server that handles the signals
    itself (uvicorn stops, then re-raises them to the handlers it found) while jobs in threads stop at their
    next step. Main thread only; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum, frame) -> None:
        request_stop(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, request) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Install SIGINT/SIGTERM handlers that request a stop; restore the previous handlers (and clear the flag) after.

    Only the main thread can install signal handlers; elsewhere this does nothing. Nesting is allowed.
    """
    if threading.current_thread() is not threading.main_thread() or _state.depth:
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    old = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    _state.depth, _state.requested = 1, None
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _state.depth, _state.requested = 0, None


#: submodules whose calls are step boundaries too: a step of a big model on a CPU can take minutes
_BLOCK_WORDS = ("Block", "Attention", "Transformer", "Resnet")


def checked_modules(module) -> list:
    """``module`` and its blocks (attention, resnet and transformer blocks): the calls a stop check precedes.

    A compiled module gets the check on its outer call only (hooks inside would break its graph).
    """
    if module is None:
        return []
    if getattr(module, "_compiled_call_impl", None) is not None:
        return [module]
    return [module] + [
        m for m in module.modules() if m is not module and any(w in type(m).__name__ for w in _BLOCK_WORDS)
    ]


@contextlib.contextmanager
def guard(*modules) -> Iterator[None]:
    """Check for a stop before every call of ``modules`` and of their blocks, so a pipeline call or a training
    step ends within one block of a Ctrl-C, however long the whole step takes.

    >>> with guard(pipe.unet, pipe.vae):  # doctest: +SKIP
    ...     pipe(prompt, num_inference_steps=200)  # ends within seconds of a Ctrl-C
    """
    handles = [
        m.register_forward_pre_hook(lambda module, args: raise_if_stopped())
        for top in modules
        for m in checked_modules(top)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def step_callback(inner=None):
    """A diffusers ``callback_on_step_end`` that ends the pipeline call at the next step after a stop request.

    ``inner`` (another callback) still runs first. Pass it as ``pipe(..., callback_on_step_end=step_callback())``.

    >>> cb = step_callback()
    >>> cb(None, 0, 999, {"latents": 1})
    {'latents': 1}
    """

    def callback(pipe, step, timestep, callback_kwargs):
        if inner is not None:
            callback_kwargs = inner(pipe, step, timestep, callback_kwargs)
        raise_if_stopped()
        return callback_kwargs

    return callback


def stopped(message: str, signal_name: str) -> StopRequested:
    """The StopRequested a stage raises: ``<signal>: <what was finished and how to resume>``."""
    return StopRequested(f"interrupted ({signal_name}): {message}")
