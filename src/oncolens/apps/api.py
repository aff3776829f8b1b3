"""REST API over one Predictor: /health, /model, /predict, /explain (FastAPI; docs at /docs).

What it protects against is in SECURITY.md: uploads are limited while they arrive (with or without
Content-Length), decoded by content with pixel limits checked before decoding; heavy work goes
through a bounded queue (503 + Retry-After when full) and explanations have a time limit; an
optional bearer token, an allowed-hosts list (against DNS rebinding) and an opt-in CORS policy.
Errors are JSON: ``{"detail": "..."}`` for the API's own 4xx/5xx, FastAPI's documented validation
format for 422, and a request id (logged with the traceback) for a 500.
"""

import asyncio
import base64
import enum
import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, create_model
from starlette.middleware.trustedhost import TrustedHostMiddleware

from oncolens.data import UnreadableImage
from oncolens.errors import DataError, OncolensError
from oncolens.explain import list_methods
from oncolens.predictor import Predictor, png_bytes

__all__ = ["create_app", "ApiSettings", "DEFAULT_MAX_UPLOAD", "LOOPBACK_HOSTS", "MAX_SLIDE_PATH"]

DEFAULT_MAX_UPLOAD = 20 * 2**20
#: the longest slide path (characters) a slide job takes; a path holds no NUL byte either
MAX_SLIDE_PATH = 4096
#: Host headers accepted by default: the loopback names (``testserver`` is the test client's).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "testserver")

log = logging.getLogger("oncolens.api")


@dataclass(frozen=True)
class ApiSettings:
    """Limits and protections of one API app."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_pixels: int = 40_000_000
    token: str | None = None  # bearer token required on /model, /predict and /explain when set
    max_running: int = 2  # predictions, explanations and slide jobs computed at once (one slide at a time)
    max_waiting: int = 16  # more wait in line; beyond that: 503 with Retry-After
    retry_after: int = 5  # seconds, in a 503's Retry-After header
    explain_timeout: float = 120.0  # seconds before an explanation answers 504
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    cors_origins: tuple[str, ...] = ()
    slide_root: Path | None = None  # slides the /slides jobs may read (paths are relative to it); None: off
    slide_output: Path | None = None  # where slide jobs write (default: a temporary folder, removed at shutdown)
    max_slide_jobs: int = 4  # slide jobs queued or running at once; beyond that: 503 with Retry-After
    keep_slide_jobs: int = 32  # finished jobs kept for polling (the oldest, and their folders, are removed first)
    slide_job_ttl: float = 3600.0  # seconds a finished job is kept


class ErrorMessage(BaseModel):
    """The body of every error the API itself answers (not request validation)."""

    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "empty or malformed upload, or bad parameters", 401: "missing or wrong bearer token",
            403: "outside what this server allows (slide jobs off, or a path outside its slide folder)",
            404: "no such slide or job", 409: "the job has not finished",
            413: "upload or image too large", 415: "not a usable image", 422: "invalid parameters",
            503: "server busy: retry after the Retry-After header's seconds", 504: "explanation took too long"}
    return {code: {"model": ErrorMessage, "description": text[code]} for code in codes if code != 422}


class _UploadTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: stop reading a request body as soon as it exceeds ``limit`` bytes and answer
    413, whether or not the client sent Content-Length (a chunked upload is counted as it arrives, so
    nothing beyond the limit is buffered or spooled to a temporary file).

    Starlette's ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``) does the counting too, but
    answers some of its 413s as plain text from outside the app's exception handlers; this API
    documents a JSON ``{"detail": ...}`` for every error, so the few lines are kept here.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        state = {"seen": 0, "over": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.limit:
                    state["over"] = True
                    raise _UploadTooLarge()
            return message

        async def guarded_send(message):
            if state["over"]:  # whatever the app makes of the aborted body, the answer is 413
                return
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _UploadTooLarge:
            pass
        if state["over"] and not state["started"]:
            await self._reject(send)

    async def _reject(self, send) -> None:
        response = JSONResponse(status_code=413, content={"detail": f"upload larger than the limit of {self.limit} bytes"})
        await response({"type": "http"}, None, send)


class WorkQueue:
    """At most ``running`` jobs at once and ``waiting`` more in line; beyond that a 503 with Retry-After.
    A request waits for its work (:meth:`call`); a job that outlives its request (a slide) is submitted to run in
    the background (:meth:`submit`), in the same places.

    Thread-based (the jobs run on worker threads), so it holds across event loops."""

    def __init__(self, running: int, waiting: int, retry_after: int):
        self.capacity = running + waiting
        self.retry_after = retry_after
        self.admitted = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(running)
        self._background: ThreadPoolExecutor | None = None

    def _admit(self, busy: str) -> None:
        with self._lock:
            full = self.admitted >= self.capacity
            if not full:
                self.admitted += 1
        if full:
            raise HTTPException(503, detail=busy, headers={"Retry-After": str(self.retry_after)})

    def _release(self) -> None:
        with self._lock:
            self.admitted -= 1

    def _work(self, fn, args, kwargs, lane: threading.Semaphore | None = None):
        try:
            with lane or nullcontext(), self._slots:
                return fn(*args, **kwargs)
        finally:  # the place is given back when the work really ends, even after a timeout answered 504
            self._release()

    async def call(self, fn, *args, timeout: float | None = None, **kwargs):
        """``fn(*args, **kwargs)`` on a worker thread once a place is free; its result (503 when the line is
        full, 504 after ``timeout`` seconds)."""
        self._admit("server busy: too many predictions and explanations in progress")
        task = asyncio.ensure_future(run_in_threadpool(self._work, fn, args, kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            raise HTTPException(504, detail=f"the explanation took longer than {timeout:g} s; try a faster method "
                                            "(e.g. gradcam) or retry later") from None

    def submit(self, fn, *args, lane: threading.Semaphore | None = None, **kwargs) -> Future:
        """Run ``fn`` in the background, admitted as :meth:`call` admits (503 when full). ``lane``: held before a
        running place is taken, so a kind of long job (slides: one at a time) never takes more places than
        its lane allows and never holds one while it waits."""
        self._admit("server busy: too much work in progress")
        with self._lock:
            if self._background is None:  # at most one thread per admitted job
                self._background = ThreadPoolExecutor(max_workers=self.capacity, thread_name_prefix="oncolens-job")
        try:
            return self._background.submit(self._work, fn, args, kwargs, lane)
        except RuntimeError:  # shut down
            self._release()
            raise HTTPException(503, detail="server shutting down", headers={"Retry-After": str(self.retry_after)})

    def shutdown(self) -> None:
        """Drop the background jobs not started yet (those running finish on their threads)."""
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)


def authorised_by(bearer: HTTPBearer, token: str):
    """A dependency that accepts only ``Authorization: Bearer <token>`` (compared in constant time)."""

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return authorised


def create_app(predictor: Predictor, settings: ApiSettings | None = None, *, max_upload_bytes: int | None = None,
               max_pixels: int | None = None) -> FastAPI:
    """A FastAPI app serving ``predictor`` with ``settings`` (keyword arguments override its limits)."""
    settings = settings or ApiSettings()
    limits = {k: v for k, v in (("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels)) if v is not None}
    if limits:
        settings = replace(settings, **limits)
    info = predictor.info
    n_levels = len(info.get("levels") or [None])
    Method = enum.Enum("Method", {name: name for name in list_methods(None)}, type=str)  # an enum in the schema
    app = FastAPI(title="oncolens", version=info["version"],
                  description="Cancer image classification with explanations. Research use only.")
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + 64 * 1024)  # + room for the form's framing
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Accept"])
    queue = WorkQueue(settings.max_running, settings.max_waiting, settings.retry_after)
    bearer = HTTPBearer(auto_error=False)
    guarded = [Depends(authorised_by(bearer, settings.token))] if settings.token else []  # no scheme without a token

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's documented format, without echoing the (possibly huge) input values back
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200], "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(OncolensError)
    async def user_error(request: Request, exc: OncolensError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)[:500]})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: logged, never shown
        request_id = uuid.uuid4().hex[:12]
        log.error("request %s %s %s failed", request_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": f"internal error (request id {request_id})",
                                                      "request_id": request_id})

    def upload(what: str = "") -> Any:
        """The ``file`` form field, with what the server accepts in the schema (the checks are in
        :func:`read_upload` and :func:`decoded`)."""
        return File(..., description=f"{what}a non-empty image file (PNG, JPEG, TIFF, BMP or DICOM) of at most "
                                     f"{settings.max_upload_bytes} bytes and {settings.max_pixels} pixels: an empty "
                                     "upload gets 400, a larger one 413, bytes that are not such an image 415",
                    json_schema_extra={"minLength": 1, "maxLength": settings.max_upload_bytes})

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) == 0:
            raise HTTPException(status_code=400, detail="empty upload: send an image file in the 'file' field")
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(status_code=413,
                                detail=f"upload larger than the limit of {settings.max_upload_bytes} bytes")
        return data

    def decoded(data: bytes, name: str):
        """The uploaded image (decoding runs on a worker thread, inside the work queue: a large or crafted
        upload never holds the event loop, so /health keeps answering)."""
        try:
            return predictor.load_bytes(data, name=name or "upload", max_pixels=settings.max_pixels)
        except UnreadableImage as exc:
            status = 413 if "too large" in exc.reason or "decompression bomb" in exc.reason else 415
            raise HTTPException(status_code=status, detail=f"not a usable image: {exc.reason}") from None

    @app.get("/health")
    async def health() -> dict:  # on the event loop: answers even when every worker thread is busy
        return {"status": "ok"}

    @app.get("/model", dependencies=guarded, responses=_errors(401))
    async def model_info() -> dict:
        return {**info, "explanation_methods": list_methods(predictor.bundle)}

    @app.post("/predict", dependencies=guarded, responses=_errors(400, 401, 413, 415, 422, 503))
    async def predict(file: UploadFile = upload(),
                      top_k: int = Query(3, ge=1, le=100),
                      alpha: float | None = Query(None, gt=0.0, lt=1.0,
                                                  description="error rate of the prediction set (calibrated "
                                                              "bundles; default: the bundle's)")) -> dict:
        """The top classes, the prediction set at ``alpha`` and the out-of-distribution verdict (``warning``
        is set when the image is unlike the training images)."""
        data, name = await read_upload(file), file.filename or ""
        try:
            prediction = (await queue.call(lambda: predictor.predict([decoded(data, name)], [name], alpha=alpha)))[0]
        except DataError as exc:  # e.g. an alpha too small for the calibration images
            raise HTTPException(status_code=400, detail=str(exc)[:500]) from None
        return prediction.to_dict(top_k)

    @app.post("/explain", dependencies=guarded, responses={
        **_errors(400, 401, 413, 415, 503, 504),
        200: {"content": {"image/png": {}}, "description": "JSON, or the overlay PNG with Accept: image/png"}})
    async def explain(request: Request, file: UploadFile = upload("the image to explain: "),
                      method: Method = Query("gradcam", description="explanation method"),
                      opacity: float = Query(0.45, ge=0.0, le=1.0, description="heatmap opacity"),
                      alpha: float | None = Query(None, ge=0.0, le=1.0, deprecated=True,
                                                  description="old name of opacity (alpha is the error rate of "
                                                              "prediction sets everywhere else)"),
                      overlay: str = Query("contours", pattern="^(contours|heatmap)$",
                                           description="which overlay an image/png response returns"),
                      level: int | None = Query(None, ge=0, le=n_levels - 1,
                                                description="tree of classifiers: level whose classifier is "
                                                            "explained (0 = top; default: the deepest)")):
        data, name = await read_upload(file), file.filename or ""
        method_name = getattr(method, "value", method)
        result = await queue.call(lambda: predictor.explain(decoded(data, name), method=method_name,
                                                            opacity=opacity if alpha is None else alpha, source=name,
                                                            level=level),
                                  timeout=settings.explain_timeout)
        if "image/png" in request.headers.get("accept", ""):
            array = result.contour_overlay if overlay == "contours" else result.heatmap_overlay
            return Response(content=png_bytes(array), media_type="image/png")
        return {**result.to_dict(),
                "heatmap_png_base64": base64.b64encode(png_bytes(result.heatmap_overlay)).decode(),
                "contours_png_base64": base64.b64encode(png_bytes(result.contour_overlay)).decode()}

    slides = SlideJobs(predictor, settings, queue)
    app.router.on_shutdown.append(slides.close)
    _slide_routes(app, slides, guarded)
    return app


#: what a finished slide job serves by name, and its media type (QuPath imports the GeoJSON: File > Import objects)
SLIDE_JOB_FILES = {"heatmap.png": "image/png", "heatmap_weighted.png": "image/png",
                   "tiles.geojson": "application/geo+json", "tiles.csv": "text/csv"}


class SlideJobRequest(BaseModel):
    """A slide on the server, relative to its slide folder, and how to tile it."""

    path: str = Field(min_length=1, max_length=MAX_SLIDE_PATH, pattern=r"^[^\x00]*$",
                      description=f"the slide's path, relative to the server's slide folder: at most "
                                  f"{MAX_SLIDE_PATH} characters, without a NUL byte")
    mpp: float = Field(0.5, gt=0, le=100, description="microns per pixel of the tiles")
    min_tissue: float = Field(0.5, ge=0, le=1, description="share of a tile that must be tissue for it to be scored")
    target: str | None = Field(None, description="the class the heatmap shows (default: the bundle's last class)")


def _job_request(classes: list[str]) -> type[SlideJobRequest]:
    """:class:`SlideJobRequest` with this bundle's classes in the schema, so that a schema-valid target is one
    the job can use."""
    return create_model("SlideJobRequest", __base__=SlideJobRequest, __doc__=SlideJobRequest.__doc__, target=(
        Optional[Literal[tuple(classes)]],
        Field(None, description="the class the heatmap shows (default: the bundle's last class)")))


class SlideJobs:
    """Slides already on the server (never a multi-GB upload) scored in the background: each job is
    :func:`~oncolens.evaluation.slides.score_slide` (a resumable scoring job) submitted to the app's work queue,
    one slide at a time, its progress the job's. Only paths inside ``settings.slide_root`` are read; at most
    ``max_slide_jobs`` are queued or running, and finished jobs (and their folders) are kept for polling within
    ``keep_slide_jobs`` and ``slide_job_ttl``."""

    def __init__(self, predictor: Predictor, settings: ApiSettings, queue: WorkQueue):
        self.predictor, self.settings, self.queue = predictor, settings, queue
        self.jobs: dict[str, dict] = {}
        self.finished_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.lane = threading.Semaphore(1)  # one slide scored at a time
        self.temporary = settings.slide_output is None
        self.output = settings.slide_output or Path(tempfile.mkdtemp(prefix="oncolens-slides-"))
        self.root = Path(settings.slide_root).resolve() if settings.slide_root is not None else None

    def public(self, text: str) -> str:
        """A message without the server's own folders (clients name slides relative to the slide folder)."""
        for folder, shown in ((self.output.resolve(), "<jobs>"), (self.output, "<jobs>"), (self.root, "<slides>")):
            if folder is not None:
                text = text.replace(str(folder), shown)
        return text

    def start(self, request: SlideJobRequest) -> dict:
        """Check the request's slide path and queue its job (HTTP errors: off 403, outside 403, missing 404,
        busy 503)."""
        if self.root is None:
            raise HTTPException(status_code=403, detail="slide jobs are off: start the server with --slide-root")
        try:
            path = (self.root / request.path).resolve()
        except (OSError, ValueError, RuntimeError):
            raise HTTPException(status_code=400, detail="the slide path cannot be resolved") from None
        if not path.is_relative_to(self.root):
            raise HTTPException(status_code=403, detail="the slide path must be inside the server's slide folder")
        try:
            found = path.is_file()
        except OSError:  # e.g. a name longer than the file system allows: schema-valid, and no such slide
            found = False
        if not found:
            raise HTTPException(status_code=404, detail=f"no slide {request.path[:200]!r} in the server's slide folder")
        self.prune()
        job_id = uuid.uuid4().hex[:12]
        with self.lock:
            active = sum(1 for j in self.jobs.values() if j["status"] in ("queued", "running"))
            if active >= self.settings.max_slide_jobs:
                raise HTTPException(503, detail=f"server busy: {active} slide jobs queued or running",
                                    headers={"Retry-After": str(self.settings.retry_after)})
            self.jobs[job_id] = {"job": job_id, "slide": request.path, "status": "queued", "tiles_done": 0,
                                 "tiles_total": None}
        try:
            self.queue.submit(self.score, job_id, path, request, lane=self.lane)
        except HTTPException:
            with self.lock:
                self.jobs.pop(job_id, None)
            raise
        return {"job": job_id, "status": "queued", "poll": f"/slides/{job_id}"}

    def score(self, job_id: str, path: Path, request: SlideJobRequest) -> None:
        """Score the slide into the job's folder; the job's state says how far it is, then what it found or
        why it failed (a bug: logged with its traceback, reported by id)."""
        from oncolens.evaluation.slides import score_slide

        self.update(job_id, status="running")
        try:
            result = score_slide(self.predictor.bundle, path, self.output / job_id, mpp=request.mpp,
                                 min_tissue=request.min_tissue, target=request.target, num_workers=0,
                                 progress=lambda done, total: self.update(job_id, tiles_done=done, tiles_total=total))
            summary = {**result.summary, "slide": {**result.summary["slide"], "path": request.path}}
            self.update(job_id, finished=True, status="done", summary=json.loads(self.public(json.dumps(summary))),
                        heatmap=str(result.heatmap) if result.heatmap else None,
                        files=sorted(name for name in SLIDE_JOB_FILES if (self.output / job_id / name).is_file()))
        except OncolensError as exc:
            self.update(job_id, finished=True, status="failed", error=self.public(str(exc))[:500])
        except Exception as exc:
            log.error("slide job %s failed", job_id, exc_info=exc)
            self.update(job_id, finished=True, status="failed", error=f"internal error (job {job_id})")

    def update(self, job_id: str, finished: bool = False, **state: Any) -> None:
        with self.lock:
            if job_id in self.jobs:
                self.jobs[job_id].update(**state)
                if finished:
                    self.finished_at[job_id] = time.monotonic()

    def prune(self) -> None:
        """Forget finished jobs past their time or beyond the count kept, and remove their folders."""
        now = time.monotonic()
        with self.lock:
            done = sorted(self.finished_at, key=self.finished_at.get)
            expired = [j for j in done if now - self.finished_at[j] > self.settings.slide_job_ttl]
            expired += [j for j in done if j not in expired][
                :max(0, len(done) - len(expired) - self.settings.keep_slide_jobs)]
            for job_id in expired:
                self.jobs.pop(job_id, None)
                self.finished_at.pop(job_id, None)
        for job_id in expired:
            shutil.rmtree(self.output / job_id, ignore_errors=True)

    def state(self, job_id: str) -> dict:
        """A copy of the job's state (404 for an unknown job)."""
        self.prune()
        with self.lock:
            if job_id not in self.jobs:
                raise HTTPException(status_code=404, detail=f"no slide job {job_id[:40]!r}")
            return dict(self.jobs[job_id])

    def file(self, job_id: str, name: str) -> Path:
        """One of a finished job's files (:data:`SLIDE_JOB_FILES`): 404 for another name or one the job did not
        write, 409 while it has not finished."""
        state = self.state(job_id)
        if name not in SLIDE_JOB_FILES:
            raise HTTPException(status_code=404, detail=f"no such job file; one of {sorted(SLIDE_JOB_FILES)}")
        if state["status"] != "done":
            raise HTTPException(status_code=409, detail=f"job {job_id} is {state['status']}: no files yet")
        if name not in state.get("files", []):
            raise HTTPException(status_code=404, detail=f"job {job_id} wrote no {name}")
        return self.output / job_id / name

    def close(self) -> None:
        """At shutdown: queued jobs dropped, a temporary output folder removed."""
        self.queue.shutdown()
        if self.temporary:
            shutil.rmtree(self.output, ignore_errors=True)


def _slide_routes(app: FastAPI, slides: SlideJobs, guarded: list) -> None:
    """POST /slides starts scoring a slide that is already on the server, GET /slides/{job} reports progress
    and, when done, the slide-level scores; /slides/{job}/heatmap is the PNG and /slides/{job}/files/{name} any
    of the job's outputs (:data:`SLIDE_JOB_FILES`: the QuPath GeoJSON, the tile table, a bag classifier's
    attention-weighted heatmap)."""
    JobRequest = _job_request(slides.predictor.classes)

    @app.post("/slides", status_code=202, dependencies=guarded, responses=_errors(400, 401, 403, 404, 503))
    async def start_slide(request: JobRequest) -> dict:
        """Start scoring a slide in the server's slide folder; answers the job id to poll. The request's
        fields are checked as the schema says (422 otherwise) before the path is looked at."""
        return slides.start(request)

    @app.get("/slides/{job_id}", dependencies=guarded, responses=_errors(401, 404))
    async def slide_status(job_id: str) -> dict:
        """Status (queued, running, done, failed), tiles done of total and, when done, the slide's scores."""
        state = slides.state(job_id)
        state.pop("heatmap", None)
        return state

    @app.get("/slides/{job_id}/heatmap", dependencies=guarded, responses={
        **_errors(401, 404, 409), 200: {"content": {"image/png": {}}, "description": "the heatmap PNG"}})
    async def slide_heatmap(job_id: str) -> Response:
        state = slides.state(job_id)
        if state["status"] != "done" or not state.get("heatmap"):
            raise HTTPException(status_code=409, detail=f"job {job_id} is {state['status']}: no heatmap yet")
        return Response(content=Path(state["heatmap"]).read_bytes(), media_type="image/png")

    @app.get("/slides/{job_id}/files/{name}", dependencies=guarded, responses={
        **_errors(401, 404, 409), 200: {"description": "one of the finished job's files (SLIDE_JOB_FILES)"}})
    async def slide_file(job_id: str, name: str) -> Response:
        return Response(content=slides.file(job_id, name).read_bytes(), media_type=SLIDE_JOB_FILES[name])
