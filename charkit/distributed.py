"""Several processes, one run: what ``accelerate launch`` / ``torchrun`` give every stage.

:func:`process_state` is accelerate's ``PartialState`` (``cpu=True`` on CPU: otherwise every rank
silently does all the work) when the process was launched with several ranks, else a
single-process stand-in with the same attributes. Stages take it as an argument; only their
top-level entry point creates it (it reads ``WORLD_SIZE``), so their ``check_inputs`` stays pure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass


def _launched() -> bool:
    # torchrun / accelerate launch set these; a plain `charkit render` needs no process group.
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(device: str = "cpu"):
    """accelerate's ``PartialState`` (``cpu=True`` on CPU), or a single-process stand-in when not launched.

    >>> state = process_state("cpu")  # doctest: +SKIP
    >>> state.num_processes, state.is_main_process  # doctest: +SKIP
    (1, True)
    """
    if not _launched():
        return SingleProcess()
    from accelerate import PartialState

    return PartialState(cpu=str(device).startswith("cpu"))


@dataclass
class SingleProcess:
    """What ``PartialState`` offers, for a run that was not launched with several processes."""

    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True

    def wait_for_everyone(self) -> None:
        pass


def device_for(state, device: str) -> str:
    """Each process on its own GPU under accelerate (``cuda`` -> ``cuda:<local rank>``)."""
    if str(device) == "cuda" and getattr(state, "num_processes", 1) > 1:
        return str(state.device)
    return str(device)


def my_share(state, items: Sequence) -> list:
    """This process's contiguous share of ``items`` (all of them in a single process)."""
    if state.num_processes <= 1:
        return list(items)
    with state.split_between_processes(list(items)) as part:
        return list(part)
