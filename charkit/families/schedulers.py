"""Sampler names as A1111 / ComfyUI / diffusers write them -> a diffusers scheduler built from the model's config.

>>> choice = resolve_scheduler("DPM++ 2M Karras")
>>> choice.class_name, choice.overrides, choice.infotext
('DPMSolverMultistepScheduler', {'use_karras_sigmas': True}, {'Sampler': 'DPM++ 2M', 'Schedule type': 'Karras'})
>>> apply_scheduler(pipe, choice)  # doctest: +SKIP

Names are matched case-insensitively: A1111's labels ("Euler a", old-style "DPM++ 2M Karras" or the sampler and
its "Schedule type" apart, as A1111 >= 1.9 writes them), A1111's internal names (``k_dpmpp_2m``), ComfyUI's
(``dpmpp_2m`` + ``karras``) and the diffusers class names. The mapping follows diffusers' own A1111 table
(docs/source/en/api/schedulers/overview.md); docs/prompts.md has the full table.

Flow-matching models (SD3, Flux) take only schedulers that solve their flow ODE: ``resolve_scheduler(name,
flow=True)`` maps "Euler" to FlowMatchEulerDiscreteScheduler, "DPM++ 2M" / "UniPC" to their ``use_flow_sigmas``
variants, "Heun" and "LCM" to the FlowMatch ones, and refuses the rest in one line.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import CharkitError

_FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


@dataclass(frozen=True)
class _Sampler:
    name: str  # A1111's label ("Sampler" in PNG info)
    cls: str | None  # diffusers class for noise-prediction models (None: no diffusers equivalent)
    overrides: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()  # A1111 internal names, ComfyUI names
    flow_cls: str | None = None  # diffusers class for flow-matching models (None: not for SD3/Flux)
    flow_overrides: dict = field(default_factory=dict)
    needs: str | None = None  # an optional package the class needs
    instead: str = ""  # for a sampler without equivalent: what to pick


_SAMPLERS = (
    _Sampler(
        "Euler", "EulerDiscreteScheduler", aliases=("k_euler", "euler"), flow_cls="FlowMatchEulerDiscreteScheduler"
    ),
    _Sampler(
        "Euler a", "EulerAncestralDiscreteScheduler", aliases=("k_euler_a", "k_euler_ancestral", "euler_ancestral")
    ),
    _Sampler("Heun", "HeunDiscreteScheduler", aliases=("k_heun", "heun"), flow_cls="FlowMatchHeunDiscreteScheduler"),
    _Sampler("LMS", "LMSDiscreteScheduler", aliases=("k_lms", "lms")),
    _Sampler("DPM2", "KDPM2DiscreteScheduler", aliases=("k_dpm_2", "dpm_2")),
    _Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a", "dpm_2_ancestral")),
    _Sampler(
        "DPM++ 2M",
        "DPMSolverMultistepScheduler",
        aliases=("k_dpmpp_2m", "dpmpp_2m"),
        flow_cls="DPMSolverMultistepScheduler",
        flow_overrides=_FLOW_SIGMAS,
    ),
    _Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++"},
        aliases=("k_dpmpp_2m_sde", "dpmpp_2m_sde"),
    ),
    _Sampler(
        "DPM++ 2M SDE Heun",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
        aliases=("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"),
    ),
    _Sampler(
        "DPM++ 3M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        aliases=("k_dpmpp_3m_sde", "dpmpp_3m_sde"),
    ),
    _Sampler("DPM++ SDE", "DPMSolverSDEScheduler", aliases=("k_dpmpp_sde", "dpmpp_sde"), needs="torchsde"),
    _Sampler("DDIM", "DDIMScheduler", aliases=("ddim",)),
    _Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, aliases=("plms",)),  # PLMS without PRK warm-up
    _Sampler(
        "UniPC",
        "UniPCMultistepScheduler",
        aliases=("uni_pc",),
        flow_cls="UniPCMultistepScheduler",
        flow_overrides=_FLOW_SIGMAS,
    ),
    _Sampler("LCM", "LCMScheduler", aliases=("lcm",), flow_cls="FlowMatchLCMScheduler"),
    _Sampler("DEIS", "DEISMultistepScheduler", aliases=("deis",)),
    _Sampler("DDPM", "DDPMScheduler", aliases=("ddpm",)),
    _Sampler("DPM++ 2S a", None, aliases=("k_dpmpp_2s_a", "dpmpp_2s_ancestral"), instead="DPM++ 2M or Euler a"),
    _Sampler("DPM fast", None, aliases=("k_dpm_fast", "dpm_fast"), instead="DPM++ 2M"),
    _Sampler("DPM adaptive", None, aliases=("k_dpm_ad", "dpm_adaptive"), instead="DPM++ 2M"),
    _Sampler("Restart", None, aliases=("restart",), instead="DPM++ 2M Karras"),
    _Sampler("DDIM CFG++", None, aliases=("ddim_cfgpp",), instead="DDIM"),
)

#: A1111 "Schedule type" -> (overrides on noise-prediction schedulers, overrides on flow-matching ones), as in
#: diffusers' table. Flow-matching schedulers already space sigmas uniformly, which "Simple" / "SGM Uniform" ask for.
SCHEDULES: dict[str, tuple[dict, dict]] = {
    "Automatic": ({}, {}),
    "Karras": ({"use_karras_sigmas": True}, {"use_karras_sigmas": True}),
    "Exponential": ({"timestep_spacing": "linspace", "use_exponential_sigmas": True}, {"use_exponential_sigmas": True}),
    "Beta": ({"timestep_spacing": "linspace", "use_beta_sigmas": True}, {"use_beta_sigmas": True}),
    "SGM Uniform": ({"timestep_spacing": "trailing"}, {}),
    "Simple": ({"timestep_spacing": "trailing"}, {}),
}
_SCHEDULE_ALIASES = {"normal": "Automatic", "sgm_uniform": "SGM Uniform", "sgmuniform": "SGM Uniform"}

#: Config keys that say *which* sampler a scheduler is. Reset to the class default on every switch, so a model's
#: shipped config (e.g. an SDXL finetune's ``use_karras_sigmas: true``) never leaks into another choice.
_SAMPLER_KEYS = (
    "algorithm_type",
    "solver_order",
    "solver_type",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "stochastic_sampling",
)


@dataclass(frozen=True)
class SchedulerChoice:
    """A resolved sampler: the diffusers class, its config overrides and the names A1111 writes in PNG info.

    >>> resolve_scheduler("euler", flow=True).class_name
    'FlowMatchEulerDiscreteScheduler'
    """

    class_name: str  # diffusers scheduler class
    sampler: str  # A1111 "Sampler"
    schedule_type: str = "Automatic"  # A1111 "Schedule type"
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)  # on top of the model's scheduler config
    flow: bool = False  # for flow-matching models (SD3, Flux)

    @property
    def infotext(self) -> dict[str, str]:
        """The ``Sampler`` / ``Schedule type`` fields of A1111's ``parameters`` text."""
        return {"Sampler": self.sampler, "Schedule type": self.schedule_type}


def _key(name: str) -> str:
    return " ".join(str(name).lower().split())


def _lookup() -> dict[str, _Sampler]:
    table: dict[str, _Sampler] = {}
    for s in _SAMPLERS:
        for n in (s.name, *s.aliases):
            table[_key(n)] = s
    return table


_BY_NAME = _lookup()
_SCHEDULE_BY_KEY = {**{_key(k): k for k in SCHEDULES}, **_SCHEDULE_ALIASES}


def _class_map(flow: bool) -> dict[str, _Sampler]:
    """diffusers class name (lowercase) -> the first sampler of the table that uses it (its plain form)."""
    out: dict[str, _Sampler] = {}
    for s in _SAMPLERS:
        cls = s.flow_cls if flow else s.cls
        if cls:
            out.setdefault(cls.lower(), s)
    return out


def sampler_names(*, flow: bool = False) -> list[str]:
    """The A1111 sampler labels charkit can run (flow-matching models: ``flow=True``).

    >>> sampler_names(flow=True)
    ['Euler', 'Heun', 'DPM++ 2M', 'UniPC', 'LCM']
    """
    return [s.name for s in _SAMPLERS if (s.flow_cls if flow else s.cls)]


def resolve_scheduler(name: str, *, schedule: str | None = None, flow: bool = False) -> SchedulerChoice:
    """The :class:`SchedulerChoice` for a sampler name and an optional A1111 "Schedule type" / ComfyUI scheduler.

    ``name`` may carry the schedule ("DPM++ 2M Karras"); ``schedule`` gives it separately ("Karras",
    "karras", "Exponential", "Beta", "SGM Uniform", "Simple", "Automatic"). ``flow=True`` resolves for
    flow-matching models (SD3, Flux). Unknown or unavailable names are a one-line CharkitError.

    >>> resolve_scheduler("dpmpp_2m_sde", schedule="karras").overrides
    {'algorithm_type': 'sde-dpmsolver++', 'use_karras_sigmas': True}
    """
    key = _key(name)
    if key in _class_map(not flow) and key not in _class_map(flow):
        kind, other = (
            ("noise-prediction", "flow-matching (SD3, Flux)") if flow else ("flow-matching", "noise-prediction")
        )
        raise CharkitError(
            f"{name!r} is a {kind} scheduler; this {other} model needs one of {', '.join(sampler_names(flow=flow))}"
        )
    sampler, suffix = _find(key, flow)
    if sampler is None:
        raise CharkitError(_unknown(name, flow))
    if suffix is not None and schedule is not None and _schedule(schedule) != suffix:
        raise CharkitError(
            f"sampler {name!r} already names the {suffix} schedule but schedule {schedule!r} was given; give one"
        )
    label = suffix or _schedule(schedule if schedule is not None else "Automatic")
    if sampler.cls is None and sampler.flow_cls is None:
        raise CharkitError(f"sampler {sampler.name!r} has no diffusers equivalent; use {sampler.instead} instead")
    cls, over = (sampler.flow_cls, sampler.flow_overrides) if flow else (sampler.cls, sampler.overrides)
    if cls is None:
        raise CharkitError(
            f"sampler {sampler.name!r} does not fit flow-matching models (SD3, Flux): "
            f"choose one of {', '.join(sampler_names(flow=True))}"
        )
    if sampler.needs and not _has_package(sampler.needs):
        raise CharkitError(
            f"sampler {sampler.name!r} ({cls}) needs the {sampler.needs} package: pip install {sampler.needs}; "
            "or use 'DPM++ 2M SDE', the stochastic DPM++ sampler that needs nothing extra"
        )
    extra = SCHEDULES[label][1 if flow else 0]
    if extra:
        _check_schedule(sampler.name, label, cls, over, extra)
    return SchedulerChoice(
        class_name=cls, sampler=sampler.name, schedule_type=label, overrides={**over, **extra}, flow=flow
    )


def _find(key: str, flow: bool) -> tuple[_Sampler | None, str | None]:
    """(sampler, schedule label carried in the name such as "DPM++ 2M Karras", or None)."""
    if key in _BY_NAME:
        return _BY_NAME[key], None
    classes = _class_map(flow)
    if key in classes:
        return classes[key], None
    if key.startswith("k_") and key.endswith("_ka") and key[:-3] in _BY_NAME:  # A1111's k_dpmpp_2m_ka & co.
        return _BY_NAME[key[:-3]], "Karras"
    for sched_key, label in sorted(_SCHEDULE_BY_KEY.items(), key=lambda kv: -len(kv[0])):
        head = key.removesuffix(" " + sched_key)
        if head != key and head in _BY_NAME:
            return _BY_NAME[head], label
    return None, None


def _schedule(name: str) -> str:
    key = _key(name)
    if key in _SCHEDULE_BY_KEY:
        return _SCHEDULE_BY_KEY[key]
    close = difflib.get_close_matches(key, list(_SCHEDULE_BY_KEY), n=1)
    hint = f"did you mean {_SCHEDULE_BY_KEY[close[0]]!r}? " if close else ""
    raise CharkitError(f"unknown schedule type {name!r}: {hint}choose one of {', '.join(SCHEDULES)}")


def _unknown(name: str, flow: bool) -> str:
    names = [s.name for s in _SAMPLERS] + [s.flow_cls if flow else s.cls for s in _SAMPLERS]
    names = [n for n in dict.fromkeys(names) if n]
    by_key = {_key(n): n for n in names} | {_key(a): a for s in _SAMPLERS for a in s.aliases}
    close = difflib.get_close_matches(_key(name), list(by_key), n=1, cutoff=0.5)
    hint = f"did you mean {by_key[close[0]]!r}? " if close else ""
    return f"unknown sampler {name!r}: {hint}choose one of {', '.join(sampler_names(flow=flow))} (docs/prompts.md)"


def _check_schedule(sampler: str, label: str, cls: str, over: dict, extra: dict) -> None:
    params = _init_params(cls)
    if over.get("use_flow_sigmas") or not all(k in params for k in extra):
        raise CharkitError(
            f"sampler {sampler!r} has no {label!r} schedule in diffusers ({cls}); use Schedule type 'Automatic'"
        )


def _init_params(cls: str) -> dict:
    import diffusers

    return dict(inspect.signature(getattr(diffusers, cls).__init__).parameters)


def _has_package(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --- apply ------------------------------------------------------------------------------------------------

# scheduler object -> (class name, config) of the model's own scheduler it was derived from. diffusers drops the
# config keys a class does not know (FlowMatch's ``shift`` in DPMSolverMultistepScheduler), so every switch starts
# from the model's config, not from the previous choice's.
_ORIGIN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def apply_scheduler(pipe, choice: SchedulerChoice) -> None:
    """Set ``pipe.scheduler`` to ``choice``, built from the model's own scheduler config plus the overrides.

    Config that describes the model (betas, ``prediction_type``, ``timestep_spacing``, ``steps_offset``,
    flow ``shift`` / dynamic shifting) is kept; keys that pick a sampler are reset first, so switching back
    and forth never accumulates overrides. A flow choice on a noise-prediction model (or the reverse) is an error.

    >>> apply_scheduler(pipe, resolve_scheduler("Euler a"))  # doctest: +SKIP
    """
    import diffusers

    origin = _ORIGIN.get(pipe.scheduler) or (type(pipe.scheduler).__name__, dict(pipe.scheduler.config))
    base_cls, base = origin
    pipe_flow = base_cls.startswith("FlowMatch")
    if choice.flow != pipe_flow:
        kind = "flow-matching (SD3, Flux)" if pipe_flow else "noise-prediction"
        raise CharkitError(
            f"sampler {choice.sampler!r} ({choice.class_name}) was resolved for "
            f"{'flow-matching' if choice.flow else 'noise-prediction'} models, but this {kind} model uses {base_cls}; "
            f"resolve it with flow={pipe_flow}"
        )
    cls = getattr(diffusers, choice.class_name)
    params = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in base.items() if k in params}
    for k in _SAMPLER_KEYS:
        if k in params:
            config[k] = params[k].default
    if choice.flow and "flow_shift" in params and "shift" in base:
        config["flow_shift"] = base["shift"]
    config.update(choice.overrides)
    takes_sigmas = "sigmas" in inspect.signature(cls.set_timesteps).parameters
    if type(pipe).__name__.startswith("Flux") and not config.get("use_flow_sigmas") and not takes_sigmas:
        raise CharkitError(
            f"sampler {choice.sampler!r} ({choice.class_name}) cannot run Flux: the Flux pipeline sets custom "
            "sigmas, which this scheduler does not take; choose Euler, DPM++ 2M, UniPC or LCM"
        )
    scheduler = cls.from_config(config)
    _ORIGIN[scheduler] = origin
    pipe.scheduler = scheduler


@contextlib.contextmanager
def using_scheduler(pipe, choice: SchedulerChoice) -> Iterator[Any]:
    """:func:`apply_scheduler` for the duration of a ``with`` block; the previous scheduler object comes back.

    >>> with using_scheduler(pipe, resolve_scheduler("Euler a")):  # doctest: +SKIP
    ...     images = pipe(prompt="a cat").images
    """
    previous = pipe.scheduler
    apply_scheduler(pipe, choice)
    try:
        yield pipe.scheduler
    finally:
        pipe.scheduler = previous
