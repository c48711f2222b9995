"""The HTTP face of a ServingModel: the Open Inference Protocol v2 REST routes, our two extension routes
(api/serving.py) and /metrics, on FastAPI. Handlers only translate: bytes and headers in, one call on the
service (in the thread pool when it blocks), bytes and a status out.
"""

from __future__ import annotations

import hmac
import json
import time

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from trtrefit import __version__
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome, RefitResult
from trtrefit.api.serving import REFIT_PATH, STATE_PATH, TOKEN_ENV
from trtrefit.serving.metrics import CONTENT_TYPE
from trtrefit.serving.protocol import (
    BINARY_EXTENSION,
    HEADER_LENGTH,
    TRTREFIT_EXTENSION,
    MetadataTensor,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
)
from trtrefit.serving.service import InputError, NotReadyError, ServingModel, TensorMeta
from trtrefit.serving.tensors import ProtocolError, datatype_name, decode_request, encode_response, error_body

JSON = "application/json"
REFIT_STATUS = {
    Outcome.PASSED: 200,
    Outcome.VERIFICATION_FAILED: 422,
    Outcome.ERROR: 422,
    Outcome.SUPERSEDED: 409,
}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, media_type=JSON, headers=headers)


def build_app(service: ServingModel, token: str | None) -> FastAPI:
    app = FastAPI(
        title="trtrefit serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _bug)
    routes = _Routes(service, token)
    for method, path, handler in (
        ("GET", "/v2/health/live", routes.live),
        ("GET", "/v2/health/ready", routes.ready),
        ("GET", "/v2", routes.server_metadata),
        ("GET", "/v2/models/{model}", routes.model_metadata),
        ("GET", "/v2/models/{model}/ready", routes.model_ready),
        ("POST", "/v2/models/{model}/infer", routes.infer),
        ("GET", STATE_PATH, routes.state),
        ("POST", REFIT_PATH, routes.refit),
        ("GET", "/metrics", routes.metrics),
    ):
        app.add_api_route(path, handler, methods=[method])
    return app


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    return error(400, f"invalid request: {exc.errors()[0].get('msg', 'bad input')}")


async def _bug(request: Request, exc: Exception) -> Response:
    return error(500, f"internal error: {type(exc).__name__}: {exc}")


class _Routes:
    """The handlers, bound to one service."""

    def __init__(self, service: ServingModel, token: str | None) -> None:
        self.service = service
        self.token = token

    def _known(self, model: str) -> None:
        if model != self.service.name:
            raise HTTPException(404, f"unknown model {model!r}; this server serves {self.service.name!r}")

    async def live(self) -> Response:
        return Response(b'{"live":true}', media_type=JSON)

    async def ready(self) -> Response:
        ready = self.service.ready
        return Response(
            b'{"ready":true}' if ready else b'{"ready":false}', 200 if ready else 503, media_type=JSON
        )

    async def server_metadata(self) -> Response:
        body = ServerMetadata(
            name="trtrefit", version=__version__, extensions=[BINARY_EXTENSION, TRTREFIT_EXTENSION]
        )
        return Response(body.model_dump_json(), media_type=JSON)

    async def model_metadata(self, model: str) -> Response:
        self._known(model)
        state = self.service.state()
        body = ModelMetadata(
            name=self.service.name,
            platform=f"trtrefit_{state.backend or 'unknown'}",
            inputs=_tensors(self.service.inputs),
            outputs=_tensors(self.service.outputs),
        )
        document = body.model_dump(mode="json")
        document[TRTREFIT_EXTENSION] = state.model_dump(mode="json", by_alias=True, exclude_none=True)
        return Response(json.dumps(document), media_type=JSON)

    async def model_ready(self, model: str) -> Response:
        self._known(model)
        ready = self.service.ready
        body = ModelReady(name=model, ready=ready)
        return Response(body.model_dump_json(), 200 if ready else 503, media_type=JSON)

    async def infer(self, model: str, request: Request) -> Response:
        self._known(model)
        started = time.perf_counter()
        body = await request.body()
        response, outcome = await _infer(self.service, body, request.headers.get(HEADER_LENGTH))
        self.service.metrics.request(outcome, time.perf_counter() - started)
        return response

    async def state(self, model: str) -> Response:
        self._known(model)
        body = self.service.state().model_dump_json(by_alias=True, exclude_none=True)
        return Response(body, media_type=JSON)

    async def refit(self, model: str, request: Request) -> Response:
        self._known(model)
        refused = _authorize(self.token, request.headers.get("authorization"))
        if refused is not None:
            return refused
        if self.service.stopping:
            return error(503, "the server is shutting down; send the refit to another pod")
        try:
            wanted = RefitRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return error(400, f"the body is not a RefitRequest: {where}: {first['msg']}")
        result: RefitResult = await run_in_threadpool(self.service.refit, wanted)
        body = result.model_dump_json(by_alias=True, exclude_none=True)
        return Response(body, REFIT_STATUS[result.outcome], media_type=JSON)

    async def metrics(self) -> Response:
        return Response(self.service.metrics.exposition(), media_type=CONTENT_TYPE)


def _tensors(metas: list[TensorMeta]) -> list[MetadataTensor]:
    return [MetadataTensor(name=m.name, datatype=datatype_name(m.dtype), shape=list(m.shape)) for m in metas]


async def _infer(service: ServingModel, body: bytes, header_length: str | None) -> tuple[Response, str]:
    try:
        decoded = decode_request(body, header_length)
        outputs = await run_in_threadpool(service.infer, decoded.tensors)
        names = [m.name for m in service.outputs]
        payload, json_size = encode_response(service.name, decoded.request, names, outputs)
    except NotReadyError as exc:
        return error(503, str(exc)), "not_ready"
    except (ProtocolError, InputError) as exc:
        return error(400, str(exc)), "client_error"
    if json_size is None:
        return Response(payload, media_type=JSON), "ok"
    headers = {HEADER_LENGTH: str(json_size)}
    return Response(payload, media_type="application/octet-stream", headers=headers), "ok"


def _authorize(token: str | None, header: str | None) -> Response | None:
    """None when the bearer token matches; else the 401 answer saying why."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if token is None:
        return error(
            401,
            f"the refit endpoint is off: this server has no refit token (--token-file or {TOKEN_ENV})",
            challenge,
        )
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return error(401, "refit needs an Authorization: Bearer <token> header", challenge)
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return error(401, "wrong refit token", challenge)
    return None
