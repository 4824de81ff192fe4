"""The studio's routes: pages over the project, files by issued id, actions as queued jobs.

    GET  /                                  project: episodes, characters, training runs, problems
    GET  /episodes/{e}?drift=1&page=N       scenes x runs grid (thumbnails, badges, per-backend scores, look)
    GET  /episodes/{e}/scenes/{s}           one scene: takes, candidates, history, prompt, parameters
    GET  /episodes/{e}/compare?run=..       runs side by side (renders and imported folders)
    GET  /characters/{name}                 reference photos, leave-one-out scores, outliers
    GET  /training/{t}                      checkpoints, scores and why the chosen one won
    GET  /jobs.json                         the queue
    GET  /file/{id}, /thumb/{id}            images, only by ids the server issued
    POST /episodes/{e}/scenes/{s}/reroll    new seed or more candidates, then render     (job)
    POST /episodes/{e}/scenes/{s}/edit      prompt / seed / LoRA scale, then render      (job)
    POST /episodes/{e}/scenes/{s}/lock      lock or unlock a take                        (at once)
    POST /episodes/{e}/scenes/{s}/repair    re-draw a drifted face                       (job)
    POST /episodes/{e}/import               a folder of external images as a run         (job)

Every request passes :mod:`charkit.studio.security` first. Pages are Jinja2 templates with autoescape
(the report toolkit's environment): a prompt or a file name is always text, never markup.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .. import __version__
from ..errors import CharkitError
from ..report import environment
from .actions import RenderSettings
from .files import FileIndex, media_type
from .jobs import JobQueue
from .project import DRIFTED, Episode, Project, Run
from .security import Guard, GuardMiddleware

log = logging.getLogger("charkit.studio")

PAGE_SIZE = 50
STATIC = {"studio.js": "text/javascript; charset=utf-8", "studio.css": "text/css; charset=utf-8"}
MAX_UPLOAD_FILES = 2000
MAX_UPLOAD_BYTES = 64 << 20  # per file


@dataclass
class Studio:
    """Server state: the project, issued file ids, the job queue, cached reference profiles."""

    root: Path
    files: FileIndex
    project: Project
    jobs: JobQueue
    settings: RenderSettings
    env: object = None  # the jinja2 environment of the studio's templates
    static: dict = field(default_factory=dict)  # static file name -> bytes
    _profiles: dict = field(default_factory=dict)
    _backend: object = None
    _face_lock: threading.Lock = field(default_factory=threading.Lock)

    def profile(self, character):
        """The character's reference profile on the dlib backend, through the face cache (built once per refs)."""
        from ..identity import FaceCache, get_backend, profile_for_character

        refs = character.ref_paths()
        key = (character.name, tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in refs))
        if key not in self._profiles:
            with self._face_lock:  # one dlib model, one thread at a time
                if self._backend is None:
                    self._backend = get_backend("dlib")
                self._profiles[key] = profile_for_character(character, self._backend, cache=FaceCache())
        return self._profiles[key]


class PageError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(
    root: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    settings: RenderSettings | None = None,
    extra_hosts: tuple[str, ...] = (),
    cache_dir: str | Path | None = None,
) -> FastAPI:
    """The studio as an ASGI app over the project folder ``root``.

    >>> app = create_app("my-project", port=8765)  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8765)  # doctest: +SKIP
    """
    from .security import MIN_TOKEN, is_loopback

    if not is_loopback(host) and (token is None or len(token) < MIN_TOKEN):
        raise CharkitError(f"host {host}: off loopback the studio needs a token of at least {MIN_TOKEN} characters")
    root = Path(root).resolve()
    if not root.is_dir():
        raise CharkitError(f"{root}: not a folder; pass the project folder (characters, storyboards, renders)")
    files = FileIndex(root, secret=secrets.token_bytes(32), cache_dir=cache_dir)
    studio = Studio(
        root=root, files=files, project=Project(root, files), jobs=JobQueue(), settings=settings or RenderSettings()
    )
    env = environment("charkit.studio")
    env.globals.update(version=__version__, badge_label=badge_label, fmt=fmt)
    studio.env = env
    studio.static = {name: (resources.files("charkit.studio") / "static" / name).read_bytes() for name in STATIC}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        studio.jobs.start()
        yield
        await run_in_threadpool(studio.jobs.close)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = studio
    app.add_middleware(GuardMiddleware, guard=Guard(host=host, port=port, token=token, extra_hosts=extra_hosts))
    for exc, handler in _HANDLERS:
        app.add_exception_handler(exc, handler)
    app.include_router(router)
    return app


router = APIRouter()
_HANDLERS: list = []


def _handles(exc):
    """Register an exception handler for every app :func:`create_app` builds."""

    def register(fn):
        _HANDLERS.append((exc, fn))
        return fn

    return register


def _studio(request: Request) -> Studio:
    return request.app.state.studio


def page(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
    studio = _studio(request)
    html = studio.env.get_template(template).render(
        csrf=request.state.csrf, jobs=studio.jobs.list(), fid=studio.files.issue, **ctx
    )
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


@_handles(PageError)
async def _page_error(request: Request, exc: PageError):
    if request.method != "GET":
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return page(request, "error.html.j2", status=exc.status, title="not found", message=str(exc))


@_handles(CharkitError)
async def _user_error(request: Request, exc: CharkitError):
    if request.method != "GET":
        return JSONResponse({"error": str(exc)}, status_code=400)
    return page(request, "error.html.j2", status=400, title="error", message=str(exc))


@_handles(RequestValidationError)
async def _bad_request(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
    text = f"{where or 'request'}: {first.get('msg', 'invalid')}"
    if request.method != "GET":
        return JSONResponse({"error": text}, status_code=400)
    return page(request, "error.html.j2", status=400, title="bad request", message=text)


@_handles(Exception)
async def _bug(request: Request, exc: Exception):
    log.exception("studio request %s %s failed", request.method, request.url.path)
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    if request.method != "GET":
        return JSONResponse({"error": text}, status_code=500)
    return page(request, "error.html.j2", status=500, title="internal error", message=text)


def episode_of(view, eid: str) -> Episode:
    ep = view.episode(eid)
    if ep is None:
        raise PageError(404, "no such episode (the project changed?): go back to the project page")
    return ep


def run_of(ep: Episode, run_id: str | None, *, kind: str | None = "render") -> Run:
    run = ep.run(run_id or "")
    if run is None or (kind is not None and run.kind != kind):
        raise PageError(404, "no such run in this episode")
    return run


# -- pages -------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def index(request: Request):
    studio = _studio(request)
    view = studio.project.view()
    return page(request, "index.html.j2", title="project", view=view)


@router.get("/episodes/{eid}", response_class=HTMLResponse)
def episode(
    request: Request,
    eid: str,
    drift: int = 0,
    page_no: int = Query(1, alias="page"),
    page_size: int = Query(PAGE_SIZE, alias="size"),
):
    studio = _studio(request)
    view = studio.project.view()
    ep = episode_of(view, eid)
    scenes = [s for s in ep.scenes if not drift or ep.drifted(s.id)]
    size = max(1, min(page_size, 500))
    pages = max(1, -(-len(scenes) // size))
    current = max(1, min(page_no, pages))
    shown = scenes[(current - 1) * size : current * size]
    return page(
        request,
        "episode.html.j2",
        title=ep.title,
        ep=ep,
        scenes=shown,
        total=len(scenes),
        drift=bool(drift),
        page_no=current,
        pages=pages,
        watch=ep.id,
    )


@router.get("/episodes/{eid}/scenes/{sid}", response_class=HTMLResponse)
def scene(request: Request, eid: str, sid: str):
    studio = _studio(request)
    from ..render.outputs import read_png_metadata

    view = studio.project.view()
    ep = episode_of(view, eid)
    row = ep.scene(sid)
    if row is None:
        raise PageError(404, "no such scene in this episode")
    takes = []
    for run in ep.runs:
        take = run.takes.get(sid)
        params = None
        if take is not None and take.path is not None and take.path.suffix.lower() == ".png":
            try:
                params = read_png_metadata(take.path)["parameters"]
            except (OSError, ValueError):
                params = None
        takes.append(
            {
                "run": run,
                "take": take,
                "parameters": params,
                "candidates": _candidates(run, take),
                "history": _history(run, sid),
                "repair": _repair(run, take),
                "busy": studio.jobs.busy(ep.id, sid),
            }
        )
    return page(request, "scene.html.j2", title=f"{ep.title}: {sid}", ep=ep, row=row, takes=takes, watch=ep.id)


@router.get("/episodes/{eid}/compare", response_class=HTMLResponse)
def compare(request: Request, eid: str):
    studio = _studio(request)
    view = studio.project.view()
    ep = episode_of(view, eid)
    chosen = request.query_params.getlist("run")
    runs = [r for r in ep.runs if r.id in chosen] if chosen else list(ep.runs)
    return page(request, "compare.html.j2", title=f"{ep.title}: compare", ep=ep, runs=runs, chosen=chosen)


@router.get("/characters/{name}", response_class=HTMLResponse)
def character(request: Request, name: str):
    studio = _studio(request)
    view = studio.project.view()
    entry = view.character(name)
    if entry is None:
        raise PageError(404, "no such character in this project")
    profile, error = None, entry.error
    refs = []
    if entry.character is not None:
        try:
            profile = studio.profile(entry.character)
            refs = entry.character.ref_paths()
        except CharkitError as e:
            error = str(e)
    rows = []
    rejected = {r.path: r.reason for r in (profile.rejected if profile else [])}
    for p in refs:
        key = str(p)
        rows.append(
            {
                "path": p,
                "name": p.name,
                "loo": profile.loo.get(key) if profile else None,
                "outlier": bool(profile and key in profile.outliers),
                "rejected": rejected.get(key),
            }
        )
    return page(request, "character.html.j2", title=entry.name, entry=entry, profile=profile, rows=rows, error=error)


@router.get("/training/{tid}", response_class=HTMLResponse)
def training(request: Request, tid: str):
    studio = _studio(request)
    view = studio.project.view()
    t = view.training(tid)
    if t is None:
        raise PageError(404, "no such training run in this project")
    return page(request, "training.html.j2", title=f"training {t.rel}", t=t, why=_why(t))


@router.get("/jobs.json")
def jobs(request: Request):
    studio = _studio(request)
    return JSONResponse({"jobs": studio.jobs.list()}, headers={"cache-control": "no-store"})


# -- files -------------------------------------------------------------------------------


def _issued(request: Request, fid: str):
    studio = _studio(request)
    entry = studio.files.lookup(fid)
    if entry is None:
        raise PageError(404, "no such file")
    return entry


@router.get("/file/{fid}")
def file(request: Request, fid: str):
    entry = _issued(request, fid)
    data = entry.path.read_bytes()
    mime = media_type(data)
    headers = {"cache-control": "private, max-age=31536000, immutable"}
    if mime is None:  # never rendered inline
        headers["content-disposition"] = "attachment"
    return Response(data, media_type=mime or "application/octet-stream", headers=headers)


@router.get("/thumb/{fid}")
def thumb(request: Request, fid: str):
    studio = _studio(request)
    entry = _issued(request, fid)
    data = studio.files.thumbnail(entry)
    if data is None:
        raise PageError(404, "not a readable image")
    return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=31536000, immutable"})


@router.get("/static/{name}")
def static_file(request: Request, name: str):
    studio = _studio(request)
    if name not in STATIC:
        raise PageError(404, "no such file")
    return Response(studio.static[name], media_type=STATIC[name], headers={"cache-control": "no-cache"})


# -- actions -----------------------------------------------------------------------------


def _target(request: Request, eid: str, sid: str, run_id: str | None):
    studio = _studio(request)
    view = studio.project.view()
    ep = episode_of(view, eid)
    if ep.scene(sid) is None:
        raise PageError(404, "no such scene in this episode")
    run = run_of(ep, run_id)
    return ep, run


def _need_storyboard(ep: Episode) -> Path:
    if ep.board is None or ep.storyboard is None:
        raise PageError(409, "this render folder's storyboard is not in the project: re-render it with the CLI")
    return ep.storyboard


def _queue_render(request: Request, ep: Episode, run: Run, sid: str, title: str, kind: str) -> dict:
    studio = _studio(request)
    from . import actions

    board = _need_storyboard(ep)
    models = actions.manifest_models(run.folder, ep.board)

    def work(progress):
        return actions.render_scene(
            board, sid, out=run.folder, settings=studio.settings, progress=progress, models=models
        )

    return studio.jobs.submit(kind, title, work, episode=ep.id, scene=sid).to_dict()


def _check_free(request: Request, ep: Episode, run: Run, sid: str, *, take_only: bool = False) -> None:
    """One job per scene; a locked take is never changed (a scene renders while any take of it is unlocked)."""
    studio = _studio(request)
    from .actions import locked_takes

    busy = studio.jobs.busy(ep.id, sid)
    if busy is not None:
        raise PageError(409, f"scene {sid} already has a job in the queue ({busy.title}); wait for it")
    locked = set(locked_takes(run.folder, sid))
    every = {r.model for r in ep.render_runs if r.folder == run.folder}
    if (take_only and run.model in locked) or (locked and locked >= every):
        raise PageError(409, f"scene {sid} is locked in {run.rel}; unlock it to render it again")


@router.post("/episodes/{eid}/scenes/{sid}/reroll")
async def reroll(request: Request, eid: str, sid: str):
    from . import actions

    form = await request.form()
    ep, run = await run_in_threadpool(_target, request, eid, sid, form.get("run"))
    mode = str(form.get("mode", "seed"))
    n = _int(form.get("candidates"), "candidates") if form.get("candidates") else None
    _check_free(request, ep, run, sid)
    board = _need_storyboard(ep)
    change = await run_in_threadpool(actions.reroll_scene, board, sid, mode=mode, candidates=n)
    what = f"seed {change['seed']}" if "seed" in change else f"{change['candidates']} candidates"
    job = _queue_render(request, ep, run, sid, f"re-roll {sid} ({what})", "reroll")
    return {"ok": True, "job": job, "message": f"{sid}: {what} written to {ep.rel}; rendering"}


@router.post("/episodes/{eid}/scenes/{sid}/edit")
async def edit(request: Request, eid: str, sid: str):
    from . import actions

    form = await request.form()
    ep, run = await run_in_threadpool(_target, request, eid, sid, form.get("run"))
    _check_free(request, ep, run, sid)
    board = _need_storyboard(ep)
    prompt = form.get("prompt")
    seed = _int(form.get("seed"), "seed") if form.get("seed") not in (None, "") else None
    lora = {}
    for key, value in form.items():
        if key.startswith("lora.") and value not in ("", None):
            lora[key[5:]] = _float(value, key)
    row = ep.scene(sid)
    unknown = set(lora) - set(row.characters)
    if unknown:
        raise PageError(400, f"lora.{sorted(unknown)[0]}: not a character of scene {sid}")
    # only what the user changed reaches the file (an untouched seed field does not pin the seed)
    prompt = None if prompt is None else str(prompt).replace("\r\n", "\n")
    prompt = None if prompt == row.prompt else prompt
    seed = None if seed == row.seed else seed
    lora = {n: v for n, v in lora.items() if row.lora.get(n) != v}
    if prompt is None and seed is None and not lora:
        return {"ok": True, "message": f"{sid}: nothing changed"}
    change = await run_in_threadpool(actions.edit_scene, board, sid, prompt=prompt, seed=seed, lora=lora or None)
    job = _queue_render(request, ep, run, sid, f"edit {sid} ({', '.join(change) or 'no change'})", "edit")
    return {"ok": True, "job": job, "message": f"{sid}: written to {ep.rel}; rendering"}


@router.post("/episodes/{eid}/scenes/{sid}/lock")
async def lock(request: Request, eid: str, sid: str):
    from .actions import set_locked

    form = await request.form()
    ep, run = await run_in_threadpool(_target, request, eid, sid, form.get("run"))
    locked = str(form.get("locked", "1")) in ("1", "true", "on")
    await run_in_threadpool(set_locked, run.folder, sid, run.model, locked)
    word = "locked" if locked else "unlocked"
    return {"ok": True, "reload": True, "message": f"{sid} on {run.label}: {word}"}


@router.post("/episodes/{eid}/scenes/{sid}/repair")
async def repair(request: Request, eid: str, sid: str):
    studio = _studio(request)
    from . import actions

    form = await request.form()
    ep, run = await run_in_threadpool(_target, request, eid, sid, form.get("run"))
    _check_free(request, ep, run, sid, take_only=True)

    def work(progress):
        return actions.repair_take(run.folder, sid, run.model, settings=studio.settings, progress=progress)

    job = studio.jobs.submit("repair", f"repair {sid} on {run.label}", work, episode=ep.id, scene=sid)
    return {"ok": True, "job": job.to_dict(), "message": f"{sid}: repair queued"}


@router.post("/episodes/{eid}/import")
async def import_run(request: Request, eid: str):
    studio = _studio(request)
    from . import actions

    form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=20)
    view = await run_in_threadpool(studio.project.view)
    ep = episode_of(view, eid)
    board = _need_storyboard(ep)
    label = str(form.get("label", "")).strip()
    uploads = []
    for item in form.getlist("files"):
        if isinstance(item, str) or not getattr(item, "filename", None):
            continue
        data = await item.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise PageError(413, f"{item.filename}: larger than {MAX_UPLOAD_BYTES >> 20} MB")
        uploads.append((item.filename, data))
    staging = await run_in_threadpool(actions.stage_upload, studio.root, label, uploads)

    def work(progress):
        rec = actions.import_images(studio.root, label, staging, storyboard=board, progress=progress)
        return {"files": len(rec.files), "rejected": len(rec.rejected)}

    job = studio.jobs.submit("import", f"import {label} ({len(uploads)} files)", work, episode=ep.id)
    return {"ok": True, "job": job.to_dict(), "message": f"importing {len(uploads)} files as {label}"}


# ------------------------------------------------------------------------------------------ helpers


def _int(value, what: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise CharkitError(f"{what} {str(value)[:40]!r}: not a whole number") from None


def _float(value, what: str) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        raise CharkitError(f"{what} {str(value)[:40]!r}: not a number") from None


def badge_label(badge: str) -> str:
    return {"no_face": "no face", "not_rendered": "not rendered", "unscored": "not scored"}.get(badge, badge)


def fmt(value, nd: int = 3) -> str:
    return "–" if value is None else f"{value:.{nd}f}"


def _candidates(run: Run, take) -> list[dict]:
    """Every best-of-N candidate of a take, with its file when the render kept it."""
    if take is None or take.record is None:
        return []
    out = []
    for c in take.record.candidates:
        path = None
        if c.file:
            p = (run.folder / c.file).resolve()
            path = p if p.is_relative_to(run.folder) and p.is_file() else None
        out.append(
            {
                "seed": c.seed,
                "similarity": c.similarity,
                "status": c.status,
                "path": path,
                "kept": c.seed == take.record.seed,
            }
        )
    return out


def _history(run: Run, sid: str) -> list[dict]:
    """Earlier takes of the scene, kept by the studio before each re-render (newest first)."""
    if run.kind != "render" or run.model is None:
        return []
    from .actions import history_dir

    d = history_dir(run.folder, sid, run.model)
    files = sorted(d.glob("*.png"), reverse=True) if d.is_dir() else []
    return [{"path": p, "name": p.stem} for p in files]


def _repair(run: Run, take) -> dict | None:
    """What ``charkit repair`` recorded on the take (the record's ``repair``): every face's tries and decision,
    and the original kept under ``originals/`` (shown as "before repair")."""
    info = (take.raw or {}).get("repair") if take is not None else None
    if not isinstance(info, dict):
        return None
    tries = []
    for face in info.get("faces", []) if isinstance(info.get("faces"), list) else []:
        if not isinstance(face, dict):
            continue
        for n, t in enumerate(face.get("tries", []) if isinstance(face.get("tries"), list) else []):
            if isinstance(t, dict):
                sim = t.get("similarity")
                tries.append(
                    {
                        "path": None,  # tries are scored in memory; only the kept one is written
                        "similarity": sim if isinstance(sim, (int, float)) else None,
                        "status": f"{face.get('character', '')} seed {t.get('seed', '')}: {t.get('status', '')}",
                        "kept": bool(face.get("kept")) and face.get("best_try") == n,
                    }
                )
    original = info.get("original")
    bp = (run.folder / original).resolve() if isinstance(original, str) else None
    before, after = info.get("before") or {}, info.get("after") or {}
    summary = {"kept": bool(info.get("kept")), "evaluator": (info.get("evaluator") or {}).get("name", "")}
    summary.update({f"{c} before -> after": f"{before.get(c)} -> {after.get(c)}" for c in before})
    return {
        "tries": tries,
        "before": bp if bp is not None and bp.is_relative_to(run.folder) and bp.is_file() else None,
        "summary": summary,
    }


def _why(t) -> list[str]:
    """Plain sentences on why the chosen checkpoint won, from the report's own numbers."""
    if t.report is None or not t.report.get("choice"):
        return ["the run has not finished: no checkpoint chosen yet"]
    choice = t.report["choice"]
    by_step = {c.step: c for c in t.checkpoints}
    chosen = by_step.get(choice.get("step"))
    out = [str(choice.get("reason", ""))]
    ranked = [by_step[s] for s in choice.get("ranked", []) if s in by_step]
    if chosen is not None and len(ranked) > 1 and chosen.identity is not None:
        runner = next((c for c in ranked if c.step != chosen.step), None)
        if runner is not None and runner.identity is not None:
            out.append(
                f"step {chosen.step} scored {chosen.identity:.4f} mean identity against {runner.identity:.4f} for "
                f"the runner-up (step {runner.step}): a margin of {chosen.identity - runner.identity:+.4f}"
            )
    left_out = sorted(set(by_step) - set(choice.get("candidates", by_step)))
    if left_out:
        out.append(f"left out by the adherence guard: steps {', '.join(map(str, left_out))}")
    if choice.get("identity_measured") is False:
        out.append("identity could not be measured (too few probe renders showed a face): the last step was kept")
    return [s for s in out if s]


__all__ = ["DRIFTED", "PAGE_SIZE", "Studio", "create_app"]
