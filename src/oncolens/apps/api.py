"""REST API over one Predictor: /health, /model, /predict, /explain (FastAPI; docs at /docs)."""

from __future__ import annotations

import base64
import logging
import uuid

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from oncolens.data import UnreadableImage
from oncolens.errors import OncolensError
from oncolens.explain import list_methods
from oncolens.predictor import Predictor, png_bytes

__all__ = ["create_app", "DEFAULT_MAX_UPLOAD"]

DEFAULT_MAX_UPLOAD = 20 * 2**20

log = logging.getLogger("oncolens.api")


def create_app(predictor: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
               max_pixels: int = 40_000_000) -> FastAPI:
    """A FastAPI app serving ``predictor``; every error is a JSON ``{"detail": ...}`` with a 4xx code."""
    app = FastAPI(title="oncolens", version=predictor.info["version"],
                  description="Cancer image classification with explanations. Research use only.")

    @app.exception_handler(OncolensError)
    async def user_error(request: Request, exc: OncolensError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: logged, never shown
        request_id = uuid.uuid4().hex[:12]
        log.error("request %s %s %s failed", request_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": f"internal error (request id {request_id})",
                                                      "request_id": request_id})

    async def read_image_upload(file: UploadFile):
        data = await file.read(max_upload_bytes + 1)
        if len(data) == 0:
            raise HTTPException(status_code=400, detail="empty upload: send an image file in the 'file' field")
        if len(data) > max_upload_bytes:
            raise HTTPException(status_code=413, detail=f"upload larger than the limit of {max_upload_bytes} bytes")
        try:
            return predictor.load_bytes(data, name=file.filename or "upload", max_pixels=max_pixels)
        except UnreadableImage as exc:
            status = 413 if "too large" in exc.reason else 415
            raise HTTPException(status_code=status, detail=f"not a usable image: {exc.reason}") from None

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def model_info() -> dict:
        return {**predictor.info, "explanation_methods": list_methods()}

    @app.post("/predict")
    async def predict(file: UploadFile = File(..., description="PNG, JPEG, TIFF, BMP or DICOM image"),
                      top_k: int = Query(3, ge=1, le=100)) -> dict:
        image = await read_image_upload(file)
        prediction = (await run_in_threadpool(predictor.predict, [image], [file.filename or ""]))[0]
        return prediction.to_dict(top_k)

    @app.post("/explain")
    async def explain(request: Request, file: UploadFile = File(...),
                      method: str = Query("gradcam", description="explanation method"),
                      alpha: float = Query(0.45, ge=0.0, le=1.0),
                      overlay: str = Query("contours", pattern="^(contours|heatmap)$",
                                           description="which overlay an image/png response returns"),
                      level: int | None = Query(None, ge=0, description="hierarchical bundles: level whose "
                                                "classifier is explained (0 = top; default: the deepest)")):
        if method not in list_methods():
            raise HTTPException(status_code=422, detail=f"unknown method {method!r}; one of {list_methods()}")
        image = await read_image_upload(file)

        result = await run_in_threadpool(predictor.explain, image, method=method, alpha=alpha,
                                         source=file.filename or "", level=level)
        if "image/png" in request.headers.get("accept", ""):
            array = result.contour_overlay if overlay == "contours" else result.heatmap_overlay
            return Response(content=png_bytes(array), media_type="image/png")
        return {**result.to_dict(),
                "heatmap_png_base64": base64.b64encode(png_bytes(result.heatmap_overlay)).decode(),
                "contours_png_base64": base64.b64encode(png_bytes(result.contour_overlay)).decode()}

    return app
