"""services.naas.server: the allocator's JSON API, served on a local Unix socket.

Role. The CNI plugin (``naas.cni``), which a container runtime starts once per
pod, asks a long-running process for allocations: this one. ``make_naas_app``
builds the API over an ``Allocator`` (the main daemon will mount the same app
later); ``serve`` runs it on a Unix socket, which is what ``portico naas
serve`` does.

The API (JSON; every error is ``{"error": {"code", "message", "field"}}``)::

    GET    /v1/health                                   {"status": "ok", "store": URL}
    GET    /v1/pools                                    each pool, its shape and usage
    GET    /v1/allocations?pool=&container_id=&interface=
    PUT    /v1/allocations/{container}/{interface}      {"pool", "namespace", "name", "network"}
    PUT    /v1/allocations/{container}/{interface}/sessions/{session}       (same body)
    GET    /v1/allocations/{container}/{interface}[/sessions/{session}]
    DELETE /v1/allocations/{container}[/{interface}[/sessions/{session}]]
    POST   /v1/gc                                       {"pool", "network", "valid_containers",
                                                         "valid_attachments": [{container_id,
                                                                                interface}]}

A PUT answers ``201`` with ``{"allocation": ..., "created": true}`` for a new
allocation and ``200`` with ``"created": false`` when the owner held one
already (an ADD repeated is harmless). DELETE and GC answer ``{"released":
[...]}``, which may be empty (a DEL repeated is harmless too). Errors:
``422 invalid`` (``field`` names the bad one), ``404 not_found``, ``409
pool_exhausted``, ``409 owner_conflict`` (held in another pool), ``409
pool_mismatch``, ``503 store_unavailable``.

*The socket.* ``bind_unix_socket`` makes it mode 0660 (uvicorn's own ``uds=``
would make it 0666: anyone on the host could release anyone's ports), removes
a stale socket file left by a crash, and refuses to start when another server
answers on it.

Handlers are plain functions: the allocator blocks (fsync, etcd round trips),
so they run in the server's thread pool, and the allocator is thread-safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from portico.services.naas.allocator import (
    Allocation,
    Allocator,
    InvalidRequest,
    NaasError,
    OwnerConflict,
    PoolExhausted,
    PoolMismatch,
    StoreUnavailable,
)

SOCKET_MODE = 0o660
DEFAULT_SOCKET = "/run/portico/naas.sock"

# Each allocator error: (HTTP status, code in the error body).
ERRORS: tuple[tuple[type[NaasError], int, str], ...] = (
    (InvalidRequest, 422, "invalid"),
    (PoolExhausted, 409, "pool_exhausted"),
    (OwnerConflict, 409, "owner_conflict"),
    (PoolMismatch, 409, "pool_mismatch"),
    (StoreUnavailable, 503, "store_unavailable"),
)


class AllocateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pool: str | None = Field(None, description="the pool's name; default: the first pool")
    namespace: str = ""
    name: str = ""
    network: str = Field("", description="the CNI network asking (its GC sees only its own)")


class AttachmentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    container_id: str
    interface: str


class GcBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pool: str | None = None
    network: str | None = None
    valid_containers: list[str] = []
    valid_attachments: list[AttachmentRef] = []


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def make_naas_app(allocator: Allocator) -> FastAPI:
    """The NaaS API over ``allocator`` (see the module's docstring)."""
    app = FastAPI(title="Portico NaaS", version="1",
                  description="Shared external addresses and port blocks for pods.")

    @app.exception_handler(NaasError)
    async def naas_error(request: Request, error: NaasError) -> JSONResponse:
        for kind, status, code in ERRORS:
            if isinstance(error, kind):
                return JSONResponse(error_body(code, str(error), getattr(error, "field", None)),
                                    status_code=status)
        return JSONResponse(error_body("failed", str(error)), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query",
                                                                             "path")]
        field = ".".join(where) or None
        message = f"{field or 'body'}: {first.get('msg', 'invalid')}"
        return JSONResponse(error_body("invalid", message, field), status_code=422)

    def answer(allocation: Allocation, created: bool) -> JSONResponse:
        return JSONResponse({"allocation": allocation.to_json(), "created": created},
                            status_code=201 if created else 200)

    def released(allocations: list[Allocation]) -> dict[str, Any]:
        return {"released": [a.to_json() for a in allocations]}

    def found(allocation: Allocation | None, what: str) -> dict[str, Any]:
        if allocation is None:
            raise _NotFound(f"no allocation for {what}")
        return {"allocation": allocation.to_json()}

    @app.exception_handler(_NotFound)
    async def not_found(request: Request, error: _NotFound) -> JSONResponse:
        return JSONResponse(error_body("not_found", str(error)), status_code=404)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "store": allocator.url, "pools": list(allocator.pools)}

    @app.get("/v1/pools")
    def pools() -> dict[str, Any]:
        return {"pools": list(allocator.usage().values())}

    @app.get("/v1/allocations")
    def list_allocations(pool: str | None = None, container_id: str | None = None,
                         interface: str | None = None) -> dict[str, Any]:
        return {"allocations": [a.to_json() for a in allocator.allocations(
            pool=pool, container_id=container_id, interface=interface)]}

    @app.put("/v1/allocations/{container_id}/{interface}")
    def allocate(container_id: str, interface: str, body: AllocateBody) -> JSONResponse:
        return answer(*allocator.allocate(pool=body.pool, container_id=container_id,
                                          interface=interface, namespace=body.namespace,
                                          name=body.name, network=body.network))

    @app.put("/v1/allocations/{container_id}/{interface}/sessions/{session}")
    def allocate_session(container_id: str, interface: str, session: str,
                         body: AllocateBody) -> JSONResponse:
        return answer(*allocator.allocate(pool=body.pool, container_id=container_id,
                                          interface=interface, session=session,
                                          namespace=body.namespace, name=body.name,
                                          network=body.network))

    @app.get("/v1/allocations/{container_id}/{interface}")
    def get(container_id: str, interface: str) -> dict[str, Any]:
        return found(allocator.get(container_id, interface),
                     f"container {container_id} interface {interface}")

    @app.get("/v1/allocations/{container_id}/{interface}/sessions/{session}")
    def get_session(container_id: str, interface: str, session: str) -> dict[str, Any]:
        return found(allocator.get(container_id, interface, session),
                     f"session {session} of container {container_id} interface {interface}")

    @app.delete("/v1/allocations/{container_id}")
    def release_container(container_id: str) -> dict[str, Any]:
        return released(allocator.release(container_id))

    @app.delete("/v1/allocations/{container_id}/{interface}")
    def release_attachment(container_id: str, interface: str) -> dict[str, Any]:
        return released(allocator.release(container_id, interface=interface))

    @app.delete("/v1/allocations/{container_id}/{interface}/sessions/{session}")
    def release_session(container_id: str, interface: str, session: str) -> dict[str, Any]:
        return released(allocator.release(container_id, interface=interface, session=session))

    @app.post("/v1/gc")
    def gc(body: GcBody) -> dict[str, Any]:
        return released(allocator.gc(
            pool=body.pool, network=body.network, valid_containers=set(body.valid_containers),
            valid_attachments={(a.container_id, a.interface) for a in body.valid_attachments}))

    return app


class _NotFound(Exception):
    pass


# ---------------------------------------------------------------- serving
def bind_unix_socket(path: str | Path, mode: int = SOCKET_MODE) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode``; a stale socket file (nobody
    answers) is replaced. Raises OSError when another server answers there or the path
    is not a socket."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path}: exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a server that died
            else:
                raise OSError(f"{path}: another server is answering on it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # no moment at which the socket is open to all
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, mode)
    return sock


def _server(app: Any) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                         lifespan="off"))


class _Terminated(Exception):
    pass


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def serve(allocator: Allocator, socket_path: str | Path) -> None:
    """Serve the API on ``socket_path`` until SIGINT or SIGTERM; the socket file is removed
    on the way out."""
    sock = bind_unix_socket(socket_path)
    # uvicorn stops on SIGTERM, then raises it again for the handler it found: with the
    # default one the process would die before removing its socket file.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _server(make_naas_app(allocator)).run(sockets=[sock])
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(socket_path)


@contextlib.contextmanager
def serving(allocator: Allocator, socket_path: str | Path) -> Iterator[Path]:
    """The API served in a thread on ``socket_path`` (tests, the bench); the path."""
    import httpx

    sock = bind_unix_socket(socket_path)
    server = _server(make_naas_app(allocator))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="portico-naas-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path))) as client:
            while True:
                try:
                    if client.get("http://naas/v1/health", timeout=0.5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError(f"the NaaS API did not come up on {socket_path}")
                time.sleep(0.02)
        yield Path(socket_path)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
