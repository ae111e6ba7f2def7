"""api: the daemon's REST API (FastAPI), its OpenAPI document generated from the config model.

Role. ``make_app(daemon, token)`` is the ASGI application ``portico daemon``
serves. Every object a config file holds has its endpoints, with the same
model as the file (``portico.control.model``), so the OpenAPI document at
``/openapi.json`` describes exactly what a YAML file may say:

=====================================  ==============================================
``GET /api/v1/config``                 the desired state and its revision
``PUT /api/v1/config``                 replace it whole (``portico apply``)
``GET /api/v1/tenants``                every tenant and the revision (``?objects=false``: names)
``GET|PUT|DELETE /api/v1/tenants/N``   one tenant (PUT creates or replaces; DELETE:
                                       refused while referenced)
``GET /api/v1/ports``                  every port and the revision (``?objects=false``: names)
``GET|PUT|DELETE /api/v1/ports/N``     one port
``GET|PUT /api/v1/provider``           the provider router (one object: no list, no delete)
``GET|PUT|DELETE /api/v1/tenants/N/P`` an object inside one, by path ``P``: a list item by
                                       index or ``id`` (``router/firewall/egress/web-in``),
                                       a mapping entry by key; likewise under ``ports/N/``
                                       and ``provider/``; written back as one change
``GET /api/v1/stats``                  the running gateway's counters
``GET /api/v1/flows``                  the flow cache, filtered (``dpctl/dump-flows``)
``POST /api/v1/trace``                 one packet through every stage, on a copy of the
                                       learned state (``ofproto/trace``; ``control.trace``)
``GET /metrics``                       Prometheus text
``GET /healthz``                       liveness, without a token
=====================================  ==============================================

Theory of operation. Writes validate the whole resulting config before
anything is stored (``Daemon``): a bad request gets 422 with every problem as
``{"path": "tenants.a.router.routes[3].via", "message": "..."}``, a write
against a stale revision (``If-Match: "<revision>"``) 409, a missing object
404; no input makes a 500. A write answers once its change is durable and in
effect. Every endpoint but ``/healthz`` needs ``Authorization: Bearer <token>``,
compared in constant time (``hmac.compare_digest``).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions'
# annotations at run time, and some name local variables (the model of a route).
import hmac
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from portico.control.daemon import Applied, Daemon
from portico.control.fieldpath import MISSING, PathError, assign, check_path, locate, remove
from portico.control.model import Config, ConfigError, Port, Provider, Tenant, format_path
from portico.control.store import Conflict, StoreError, document_of
from portico.control.trace import TraceRequest
from portico.control.trace import trace as trace_packet

API = "/api/v1"


def _problems(items: list[tuple[str, str]]) -> JSONResponse:
    return JSONResponse(status_code=422, content={
        "error": "invalid config",
        "problems": [{"path": path, "message": message} for path, message in items]})


def _expect(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    text = if_match.strip().strip('"')
    if not text.isdigit():
        raise HTTPException(400, detail=f"If-Match: {if_match!r} is not a revision number")
    return int(text)


def _applied(result: Applied) -> dict[str, Any]:
    return {"revision": result.revision, "changed": result.changed}


def make_app(daemon: Daemon, token: str) -> FastAPI:
    """The API over ``daemon``; every call but /healthz needs ``token``."""
    if not token:
        raise ValueError("token: the API needs a token (PORTICO_TOKEN or --token-file)")
    app = FastAPI(title="Portico", version="1",
                  description="The gateway's desired state and running state.")
    bearer = HTTPBearer(auto_error=False)

    async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                Depends(bearer)]) -> None:
        # async: a plain function would cost every request a hop to the thread pool.
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, detail="a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for e in error.errors():
            loc = [part for part in e.get("loc", ()) if part not in ("body", "query", "header",
                                                                      "path")]
            problems.append((format_path(loc), str(e.get("msg", "invalid"))))
        return _problems(problems)

    @app.exception_handler(ConfigError)
    async def refused(_: Request, error: ConfigError) -> JSONResponse:
        return _problems(error.problems)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, error: Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"error": str(error)})

    @app.exception_handler(StoreError)
    async def unavailable(_: Request, error: StoreError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": str(error)})

    guarded = [Depends(authorized)]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "revision": daemon.revision}

    @app.get(f"{API}/config", dependencies=guarded)
    def get_config() -> dict[str, Any]:
        # One store read: the revision and the objects agree, so a client that writes
        # back with If-Match on this revision cannot overwrite a change it never saw.
        snapshot = daemon.store.read()
        return {"revision": snapshot.revision, "config": document_of(snapshot.objects)}

    @app.put(f"{API}/config", dependencies=guarded)
    async def put_config(request: Request, config: Config,
                             if_match: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        document = await request.json()  # stored as written; ``config`` validated it
        return _applied(daemon.apply(document, expect=_expect(if_match), parsed=config))

    def object_routes(kind: str, model: type, *, deletable: bool) -> None:
        def key(name: str) -> str:
            return f"{kind}/{name}"

        @app.get(f"{API}/{kind}/{{name}}", dependencies=guarded, name=f"get_{kind}")
        def get_one(name: str) -> dict[str, Any]:
            objects = daemon.store.read().objects
            if key(name) not in objects:
                raise HTTPException(404, detail=f"{kind}.{name}: no such object")
            return objects[key(name)]

        @app.put(f"{API}/{kind}/{{name}}", dependencies=guarded, name=f"put_{kind}")
        async def put_one(name: str, request: Request,
                          body: model,  # type: ignore[valid-type]
                          if_match: Annotated[str | None, Header()] = None) -> dict[str, Any]:
            document = await request.json()  # stored as written; ``body`` validated it
            return _applied(daemon.put_object(key(name), document, expect=_expect(if_match),
                                              parsed=body))

        if deletable:
            @app.delete(f"{API}/{kind}/{{name}}", dependencies=guarded, name=f"delete_{kind}")
            def delete_one(name: str,
                           if_match: Annotated[str | None, Header()] = None) -> dict[str, Any]:
                try:
                    return _applied(daemon.delete_object(key(name), expect=_expect(if_match)))
                except KeyError:
                    raise HTTPException(404, detail=f"{kind}.{name}: no such object") from None

    object_routes("tenants", Tenant, deletable=True)
    object_routes("ports", Port, deletable=True)

    # Every object inside an object, by its path: tenants/a/router/routes/0,
    # tenants/a/router/firewall/egress/web-in (a list item by its id),
    # tenants/a/router/firewall/containers/web. PUT creates or replaces it, DELETE
    # removes it; either way the whole object is validated and written back as one
    # change (If-Match as for the object).
    def located(key: str, path: str, *, creating: bool) -> tuple[dict[str, Any], list[Any], Any]:
        snapshot = daemon.store.read()
        if key not in snapshot.objects:
            raise HTTPException(404, detail=f"{key}: no such object")
        document = snapshot.objects[key]
        try:
            parts, value = locate(document, path.strip("/").split("/"), creating=creating)
            check_path(key.split("/")[0], parts, key)
        except PathError as error:
            raise HTTPException(404, detail=f"{key}: {error}") from None
        return document, parts, value

    def read_part(key: str, path: str) -> Any:
        *_, value = located(key, path, creating=False)
        if value is MISSING:
            raise HTTPException(404, detail=f"{key}: {path}: not set")
        return value

    def write_part(key: str, path: str, value: Any, if_match: str | None, *,
                   removing: bool) -> dict[str, Any]:
        document, parts, _ = located(key, path, creating=not removing)
        named = path.strip("/").split("/")[-1]
        if (not removing and isinstance(parts[-1], int) and not named.isdigit()
                and isinstance(value, dict)):
            value = {"id": named, **value}  # a list item named by its id in the path
        try:
            edited = remove(document, parts) if removing else assign(document, parts, value)
        except PathError as error:
            raise HTTPException(404, detail=f"{key}: {error}") from None
        return _applied(daemon.put_object(key, edited, expect=_expect(if_match)))

    for kind in ("tenants", "ports"):
        def named_routes(kind: str = kind) -> None:
            part = f"{API}/{kind}/{{name}}/{{path:path}}"

            @app.get(part, dependencies=guarded, name=f"get_{kind}_part")
            def get_part(name: str, path: str) -> Any:
                return read_part(f"{kind}/{name}", path)

            @app.put(part, dependencies=guarded, name=f"put_{kind}_part")
            def put_part(name: str, path: str, value: Annotated[Any, Body()],
                         if_match: Annotated[str | None, Header()] = None) -> dict[str, Any]:
                return write_part(f"{kind}/{name}", path, value, if_match, removing=False)

            @app.delete(part, dependencies=guarded, name=f"delete_{kind}_part")
            def delete_part(name: str, path: str,
                            if_match: Annotated[str | None, Header()] = None) -> dict[str, Any]:
                return write_part(f"{kind}/{name}", path, None, if_match, removing=True)

        named_routes()

    @app.get(f"{API}/provider/{{path:path}}", dependencies=guarded)
    def get_provider_part(path: str) -> Any:
        return read_part("provider", path)

    @app.put(f"{API}/provider/{{path:path}}", dependencies=guarded)
    def put_provider_part(path: str, value: Annotated[Any, Body()],
                          if_match: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        return write_part("provider", path, value, if_match, removing=False)

    @app.delete(f"{API}/provider/{{path:path}}", dependencies=guarded)
    def delete_provider_part(path: str, if_match: Annotated[str | None, Header()] = None
                             ) -> dict[str, Any]:
        return write_part("provider", path, None, if_match, removing=True)

    @app.get(f"{API}/provider", dependencies=guarded)
    def get_provider() -> dict[str, Any]:
        return daemon.store.read().objects.get("provider", {})

    @app.put(f"{API}/provider", dependencies=guarded)
    async def put_provider(request: Request, body: Provider,
                           if_match: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        document = await request.json()  # stored as written; ``body`` validated it
        return _applied(daemon.put_object("provider", document, expect=_expect(if_match),
                                          parsed=body))

    @app.get(f"{API}/stats", dependencies=guarded)
    def stats() -> dict[str, Any]:
        with daemon.lock:
            numbers = daemon.gateway.stats()
            around = {name: dict(read()) for name, read in daemon.sources.items()}
        return {"revision": daemon.revision, "generation": daemon.gateway.topology.generation,
                "reconfigurations": daemon.reconfigurations,
                "last_apply_seconds": daemon.last_apply_seconds, **numbers, **around}

    @app.get(f"{API}/flows", dependencies=guarded)
    def flows(tenant: str | None = None, src: str | None = None, dst: str | None = None,
              protocol: int | None = Query(None, ge=0, le=255), port: str | None = None,
              limit: int = Query(1000, ge=1, le=100_000)) -> list[dict[str, Any]]:
        from dataclasses import asdict

        from portico.datapath.flowdump import dump_flows

        with daemon.lock:
            try:
                found = dump_flows(daemon.gateway, tenant=tenant, src=src, dst=dst,
                                   protocol=protocol, port=port, limit=limit)
            except ValueError as error:
                raise HTTPException(422, detail=str(error)) from None
        return [asdict(flow) for flow in found]

    @app.get("/metrics", dependencies=guarded, response_class=PlainTextResponse)
    def metrics() -> str:
        from portico.control import metrics as prometheus

        with daemon.lock:
            extra: dict[str, float] = {"portico_revision": daemon.revision,
                                       "portico_reconfigurations_total":
                                           daemon.reconfigurations}
            for source, read in daemon.sources.items():
                for counter, value in read().items():
                    extra[f"portico_{source}_{counter}_total"] = value
            return prometheus.render(daemon.gateway, ports=daemon.ports, extra=extra)

    def list_route(kind: str) -> None:
        # One store read: the names, the objects and the revision they are at agree, so
        # a client may edit one and write it back with If-Match on that revision.
        @app.get(f"{API}/{kind}", dependencies=guarded, name=f"list_{kind}")
        def list_all(response: Response, objects: bool = True) -> dict[str, Any]:
            snapshot = daemon.store.read()
            items = {key.split("/", 1)[1]: value for key, value in snapshot.objects.items()
                     if key.startswith(f"{kind}/")}
            response.headers["ETag"] = f'"{snapshot.revision}"'
            listed: dict[str, Any] = {"revision": snapshot.revision, "names": list(items)}
            if objects:
                listed["items"] = items
            return listed

    list_route("tenants")
    list_route("ports")

    @app.post(f"{API}/trace", dependencies=guarded)
    def post_trace(request: TraceRequest) -> dict[str, Any]:
        # Under the lock: the sandbox is a consistent copy, and the tables it shares
        # with the gateway do not change while the packet runs (``Gateway.sandbox``).
        with daemon.lock:
            report = trace_packet(daemon.gateway, request)
            return {"revision": daemon.revision,
                    "generation": daemon.gateway.topology.generation, **report}

    return app
