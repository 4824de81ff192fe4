"""One worker, one queue: every studio action that renders, scores or repairs runs here, in order.

A machine has one GPU, so the studio never runs two renders at once: each action is a
:class:`Job` on a FIFO queue served by a single worker thread. A job is a plain function taking a
``progress(fraction, message)`` callback (the same library functions the CLI calls); the page polls
``/jobs.json`` and shows the queue, each job's progress and, for a failed one, its one-line error.

A :class:`CharkitError` (bad input: a locked scene, a storyboard that no longer validates) is shown as
it is; anything else is shown as one line (type and message) and logged with its traceback.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CharkitError
from ..interrupts import Interrupted

log = logging.getLogger("charkit.studio")

Progress = Callable[[float, str], None]
STATES = ("queued", "running", "done", "failed")
#: finished jobs kept in the list (the oldest drop off)
KEEP_FINISHED = 50


@dataclass
class Job:
    """One queued action and where it stands."""

    id: str
    kind: str  # reroll | edit | import | repair
    title: str
    run: Callable[[Progress], Any] = field(repr=False)
    episode: str | None = None
    scene: str | None = None
    state: str = "queued"
    progress: float = 0.0
    message: str = "waiting for the worker"
    error: str | None = None
    result: Any = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def to_dict(self) -> dict:
        end = self.finished or time.time()
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "episode": self.episode,
            "scene": self.scene,
            "state": self.state,
            "progress": round(self.progress, 3),
            "message": self.message,
            "error": self.error,
            "seconds": round(end - self.started, 1) if self.started else None,
        }


def one_line(exc: BaseException) -> str:
    """A failure as the one line the page shows."""
    if isinstance(exc, CharkitError):
        return str(exc)
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"[:500]


class JobQueue:
    """A FIFO of jobs and the one thread that runs them.

    >>> jobs = JobQueue()
    >>> job = jobs.submit("demo", "one plus one", lambda progress: 1 + 1, episode="e1", scene="s02")
    >>> done = jobs.wait(job.id)
    >>> done.state, done.result
    ('done', 2)
    >>> jobs.close()
    """

    def __init__(self):
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._work, name="charkit-studio-worker", daemon=True)
                self._thread.start()

    def submit(
        self, kind: str, title: str, fn: Callable[[Progress], Any], *, episode: str | None = None, scene=None
    ) -> Job:
        """Queue ``fn``; returns the job at once (state ``queued``)."""
        if self._closed:
            raise CharkitError("the studio is shutting down; no new jobs")
        job = Job(id=f"j{next(self._ids)}", kind=kind, title=title, run=fn, episode=episode, scene=scene)
        with self._lock:
            self._jobs[job.id] = job
            self._trim()
        self.start()
        self._queue.put(job)
        return job

    def busy(self, episode: str, scene: str) -> Job | None:
        """The queued or running job of that scene, if any (one job per scene at a time)."""
        with self._lock:
            return next((j for j in self._jobs.values() if j.active and (j.episode, j.scene) == (episode, scene)), None)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(self) -> list[dict]:
        """Every job, newest first."""
        with self._lock:
            return [j.to_dict() for j in reversed(list(self._jobs.values()))]

    def wait(self, job_id: str, timeout: float = 600.0) -> Job:
        """Block until the job finished (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._jobs[job_id].active:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} still {self._jobs[job_id].state} after {timeout} s")
                self._changed.wait(left)
        return self._jobs[job_id]

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, let the running one finish (up to ``timeout``), drop the queued ones."""
        self._closed = True
        with self._lock:
            for j in self._jobs.values():
                if j.state == "queued":
                    j.state, j.error, j.message = "failed", "the studio stopped before this job ran", "cancelled"
            self._changed.notify_all()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker --------------------------------------------------------------------------

    def _trim(self) -> None:
        done = [j for j in self._jobs.values() if not j.active]
        for j in done[: max(0, len(done) - KEEP_FINISHED)]:
            del self._jobs[j.id]

    def _update(self, job: Job, **changes) -> None:
        with self._changed:
            for k, v in changes.items():
                setattr(job, k, v)
            self._changed.notify_all()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.state != "queued":
                continue  # cancelled by close()
            self._update(job, state="running", started=time.time(), message="starting", progress=0.0)

            def progress(fraction: float, message: str, job=job) -> None:
                self._update(job, progress=max(0.0, min(1.0, float(fraction))), message=message)

            try:
                result = job.run(progress)
            except Interrupted as e:  # the studio is stopping (Ctrl-C): the job stopped at a step boundary
                self._update(
                    job, state="failed", error=f"stopped ({e.signal_name})", message="stopped", finished=time.time()
                )
            except Exception as e:  # a job never takes the worker down: it fails with one line
                if not isinstance(e, CharkitError):
                    log.exception("studio job %s (%s) failed", job.id, job.title)
                self._update(job, state="failed", error=one_line(e), message="failed", finished=time.time())
            else:
                self._update(job, state="done", result=result, progress=1.0, message="done", finished=time.time())
