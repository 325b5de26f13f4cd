"""The admin REST API under /admin: pools, prices, backends, SLO, policy, predictor, scaling hints, client keys,
and the status page's one document (gateway/status.py).

Every change is validated, written to the state store as a new config version (compare-and-set,
so two admins cannot silently overwrite each other), applied by every replica from there, and
audited in the log. One table of routes drives both the router and the OpenAPI document.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError

from ricardo.errors import InvalidInput
from ricardo.gateway.config import ROLES, PoolConfig, SharedConfig, SLOConfig, backend_id, backend_key
from ricardo.gateway.keys import KeyBody
from ricardo.gateway.state import GatewayState
from ricardo.gateway.status import status_document
from ricardo.gateway.store import StoreUnavailable
from ricardo.gateway.urls import UnsafeURL, check_resolved, redact
from ricardo.protocol.openai import OpenAIError, load_json

audit = logging.getLogger("ricardo.audit")
CAS_ATTEMPTS = 5


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Role = Literal["prefill", "decode"]


class PriceBody(_Body):
    price_per_hour: float = Field(ge=0, le=10_000, description="$/h per replica")
    role: Role | None = Field(default=None, description="of a prefill/decode pair: the side whose price this is")


class PricesBody(_Body):
    prices: dict[str, float | dict[Role, float]] = Field(
        min_length=1, description="pool name -> $/h per replica (a pair: {prefill: $/h, decode: $/h})"
    )


class BackendBody(_Body):
    url: HttpUrl
    role: Role | None = Field(
        default=None, description="of a prefill/decode pair: the side the backend serves (needed to add one)"
    )


class PolicyBody(_Body):
    policy: str


Mutation = Callable[[dict], str]  # edits the shared config document in place, returns an audit line


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    handler: Callable[[web.Request], Awaitable[web.Response]]
    body: type[BaseModel] | None = None


# -- reading --------------------------------------------------------------------------------------
async def list_pools(request: web.Request) -> web.Response:
    state = _state(request)
    return web.json_response({"version": state.version, "pools": [_pool_status(state, n) for n in state.pools]})


async def get_pool(request: web.Request) -> web.Response:
    state = _state(request)
    return web.json_response(_pool_status(state, _known_pool(state, request.match_info["pool"])))


def _pool_status(state: GatewayState, name: str) -> dict:
    pool = state.pools[name]
    config = pool.config
    ledger = pool.ledger
    if pool.pair is None:
        utilization = ledger.in_flight_load / max(1, len(pool.backends))
    else:  # the ledger charges each side apart (`in_flight_load` the prefill's): the busier side's, as a policy reads
        prefill = sum(1 for b in pool.backends if b.role == "prefill")
        utilization = max(
            ledger.in_flight_load / max(1, prefill), ledger.decode_load / max(1, len(pool.backends) - prefill)
        )
    now = time.monotonic()
    book = state.model_book(state.config.pool_model(config))
    status = {
        "name": name,
        "role": config.role,
        "hardware": pool.hardware,
        "price_per_hour": pool.price_per_hour,
        "price_source": "override" if config.price_per_hour is not None else f"price set {state.book.price_set}",
        "profile": book.source(pool.hardware),
        "model": book.model,
        "models": list(pool.models),
        "in_flight": pool.ledger.in_flight,
        "utilization": round(utilization, 4),
        # replicas' worth its backends run or queue beyond this gateway's requests, by their own /metrics
        "external_load": round(pool.view(now).external_load, 4),
        "ttft_ms": pool.ledger.ttft_ms,
        "latency_per_token_ms": pool.ledger.latency_per_token_ms,  # latency / output tokens, the profiles' measure
        "lateness": pool.ledger.lateness,  # recent latency per token over the capacity model's prediction
        "backends": [
            {
                "url": b.shown,
                "role": b.role,
                "healthy": b.healthy,
                "draining": b.draining,
                "in_flight": b.in_flight,
                "cooling_down": b.failures > 0,
                "outlier": b.outlier.state,  # in service, ejected, probing, half-open (gateway/outlier.py)
                # what it says of itself on its /metrics (gateway/telemetry.py); null if nothing we know
                "telemetry": None if b.telemetry is None else b.telemetry.as_json(now),
            }
            for b in pool.backends
        ],
    }
    if pool.pair is not None:  # a pair's unit price is one replica of each side; each side's price and source
        status["link_gbps"] = pool.pair.link_gbps
        status["price_source"] = "per role"
        status["roles"] = {
            role.role: {
                "hardware": role.hardware,
                "price_per_hour": state.role_prices(config)[role.role],
                "price_source": "override" if role.price_per_hour is not None else f"price set {state.book.price_set}",
                "profile": book.source(role.hardware),
                "backends": len(role.backends),
            }
            for role in config.roles()
        }
    return status


async def get_slo(request: web.Request) -> web.Response:
    return web.json_response(_state(request).shared.slo.model_dump())


async def get_policy(request: web.Request) -> web.Response:
    from ricardo.policies.routing import POLICIES

    return web.json_response({"policy": _state(request).shared.policy, "available": sorted(POLICIES)})


async def get_predictor(request: web.Request) -> web.Response:
    state = _state(request)
    return web.json_response(
        {
            "output_tokens": state.shaper.predictor.accuracy(),
            "model": state.shaper.predictor.info,
            "learning": state.learning.status(),
            "input_tokens": {"exact": state.shaper.counter.exact, "correction": state.shaper.counter.ratio()},
        }
    )


async def get_status(request: web.Request) -> web.Response:
    hints = request.app.get("scaling_hints")
    return web.json_response(status_document(_state(request), hints() if hints else {}))


async def get_scaling(request: web.Request) -> web.Response:
    hints = request.app.get("scaling_hints")
    return web.json_response(hints() if hints else {"desired": {}, "note": "no hints computed yet"})


# -- changing ----------------------------------------------------------------------------------
async def set_price(request: web.Request) -> web.Response:
    name = request.match_info["pool"]
    body = await _parse(request, PriceBody)

    def change(doc: dict) -> str:
        side = _side(_pool_in(doc, name), body.role)
        old, side["price_per_hour"] = side.get("price_per_hour"), body.price_per_hour
        return f"price of pool {name}{_of(body.role)}: {old} -> {body.price_per_hour}"

    return await _commit(request, "set_price", change)


async def set_prices(request: web.Request) -> web.Response:
    body = await _parse(request, PricesBody)

    def change(doc: dict) -> str:
        for name, given in body.prices.items():
            pool = _pool_in(doc, name)
            by_role: dict[Role | None, float] = {None: given} if isinstance(given, float | int) else {**given}
            for role, price in by_role.items():
                if not 0 <= price <= 10_000:
                    raise OpenAIError(422, f"price of pool {name} must be between 0 and 10000 $/h", param=name)
                _side(pool, role)["price_per_hour"] = price
        return "prices: " + ", ".join(f"{n}={p}" for n, p in body.prices.items())

    return await _commit(request, "set_prices", change)


async def add_pool(request: web.Request) -> web.Response:
    body = await _parse(request, PoolConfig)
    for role in body.roles():
        for url in role.backends:
            await _check_url(request, str(url))

    def change(doc: dict) -> str:
        if any(p["name"] == body.name for p in doc["pools"]):
            raise OpenAIError(409, f"pool {body.name} exists already", "conflict_error", "name")
        doc["pools"].append(body.model_dump(mode="json"))
        kinds = ", ".join(f"{r.role} {r.hardware}: {len(r.backends)} backends" for r in body.roles())
        return f"pool {body.name} added ({kinds})"

    return await _commit(request, "add_pool", change, status=201)


async def remove_pool(request: web.Request) -> web.Response:
    name = request.match_info["pool"]

    def change(doc: dict) -> str:
        _pool_in(doc, name)
        doc["pools"] = [p for p in doc["pools"] if p["name"] != name]
        return f"pool {name} removed"

    return await _commit(request, "remove_pool", change)


async def add_backend(request: web.Request) -> web.Response:
    body = await _parse(request, BackendBody)
    name, url = request.match_info["pool"], backend_key(body.url)
    await _check_url(request, url)

    def change(doc: dict) -> str:
        pool = _pool_in(doc, name)
        side = _side(pool, body.role)
        if any(backend_id(url) in map(backend_id, s.get("backends", [])) for s in _sides(pool)):
            raise OpenAIError(409, f"backend {redact(url)} is in pool {name} already", "conflict_error", "url")
        side.setdefault("backends", []).append(url)
        return f"backend {redact(url)} added to pool {name}{_of(body.role)}"

    return await _commit(request, "add_backend", change, status=201)


async def drain_backend(request: web.Request) -> web.Response:
    return await _set_draining(request, True)


async def undrain_backend(request: web.Request) -> web.Response:
    return await _set_draining(request, False)


async def _set_draining(request: web.Request, draining: bool) -> web.Response:
    body = await _parse(request, BackendBody)
    name, url = request.match_info["pool"], backend_key(body.url)

    def change(doc: dict) -> str:
        pool = _pool_in(doc, name)
        side, configured = _backend_in(pool, url, body.role)
        others = [u for u in side.get("draining", []) if backend_id(u) != backend_id(url)]
        side["draining"] = [*others, configured] if draining else others
        return f"backend {redact(url)} of pool {name} {'draining' if draining else 'back in service'}"

    return await _commit(request, "drain_backend" if draining else "undrain_backend", change)


async def remove_backend(request: web.Request) -> web.Response:
    body = await _parse(request, BackendBody)
    name, url = request.match_info["pool"], backend_key(body.url)

    def change(doc: dict) -> str:
        side, _ = _backend_in(_pool_in(doc, name), url, body.role)
        side["backends"] = [u for u in side["backends"] if backend_id(u) != backend_id(url)]
        side["draining"] = [u for u in side.get("draining", []) if backend_id(u) != backend_id(url)]
        return f"backend {redact(url)} removed from pool {name}"

    return await _commit(request, "remove_backend", change)


async def set_slo(request: web.Request) -> web.Response:
    body = await _parse(request, SLOConfig)

    def change(doc: dict) -> str:
        old, doc["slo"] = doc.get("slo"), body.model_dump()
        return f"default SLO: {old} -> {doc['slo']}"

    return await _commit(request, "set_slo", change)


async def set_policy(request: web.Request) -> web.Response:
    body = await _parse(request, PolicyBody)

    def change(doc: dict) -> str:
        old, doc["policy"] = doc.get("policy"), body.policy
        return f"policy: {old} -> {body.policy}"

    return await _commit(request, "set_policy", change)


async def _commit(request: web.Request, action: str, change: Mutation, status: int = 200) -> web.Response:
    """Apply `change` to the shared config as a new version; retry when another admin got there first."""
    state = _state(request)
    for _ in range(CAS_ATTEMPTS):
        version, current = state.version, state.shared.model_dump(mode="json")
        doc = copy.deepcopy(current)
        line = change(doc)
        try:
            shared = SharedConfig.model_validate(doc)
            state.check(shared)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise OpenAIError(422, redact(f"{'.'.join(map(str, first['loc']))}: {first['msg']}")) from None
        except InvalidInput as exc:
            raise OpenAIError(422, redact(str(exc))) from None
        try:
            new_version = await state.store.update_config(version, shared.model_dump(mode="json"))
        except StoreUnavailable as exc:
            raise _store_down(exc) from None
        # The store delivers each new version to its watchers, state.apply among them, before it returns (here and
        # in read_config): applying it here too ran, and logged, every change twice.
        if new_version is None:  # someone else changed it: catch up and redo the change on theirs
            await state.store.read_config()
            if state.refused is not None and state.refused[0] > state.version:
                refused, why = state.refused
                raise OpenAIError(
                    409,
                    f"this replica refused config version {refused} ({why}) and runs version {state.version}: a "
                    "change made here cannot apply on top of it; fix that version through a replica that runs it",
                    "conflict_error",
                )
            continue
        state.metrics.admin_changes.labels(action).inc()
        audit.info("admin %s by %s (version %d -> %d): %s", action, request.remote, version, new_version, redact(line))
        return web.json_response({"version": new_version, "change": redact(line)}, status=status)
    raise OpenAIError(409, "the config kept changing under this request; retry", "conflict_error")


# -- client keys ----------------------------------------------------------------------------------
async def list_keys(request: web.Request) -> web.Response:
    return web.json_response({"keys": await _state(request).keys.describe()})


async def create_key(request: web.Request) -> web.Response:
    body = await _parse(request, KeyBody)
    state = _state(request)
    try:
        key, plain = await state.keys.create(body)
    except StoreUnavailable as exc:
        raise _store_down(exc) from None
    state.metrics.admin_changes.labels("create_key").inc()
    audit.info(
        "admin create_key by %s: key %s (%s, %s...): %s, priority %d",
        request.remote,
        key.id,
        key.name,
        key.prefix,
        key.limits(),
        key.priority,
    )
    answer = {"id": key.id, "name": key.name, "prefix": key.prefix, **key.limits(), "priority": key.priority}
    answer["key"] = plain
    return web.json_response({**answer, "note": "the key is shown this once; only its hash is kept"}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    key_id, state = request.match_info["key_id"], _state(request)
    try:
        revoked = await state.keys.revoke(key_id)
    except StoreUnavailable as exc:
        raise _store_down(exc) from None
    if not revoked:
        raise OpenAIError(404, f"no key with id {key_id!r}", "not_found_error", "key_id")
    state.metrics.admin_changes.labels("revoke_key").inc()
    audit.info("admin revoke_key by %s: key %s", request.remote, key_id)
    return web.json_response({"revoked": key_id})


def _store_down(exc: StoreUnavailable) -> OpenAIError:
    if exc.sent:  # the store executes a command whose answer never comes as readily as one it never got
        what = "did not answer in time: the change may have been made on every replica; read it back before retrying"
    else:
        what = "is unreachable: the change was not made on any replica; retry when it is back"
    return OpenAIError(503, f"the shared state store {what}", "service_unavailable", headers={"Retry-After": "2"})


# -- plumbing -------------------------------------------------------------------------------------
def _state(request: web.Request) -> GatewayState:
    return request.app["state"]


def _known_pool(state: GatewayState, name: str) -> str:
    if name not in state.pools:
        raise OpenAIError(404, f"no pool named {name!r}", "not_found_error", "pool")
    return name


def _pool_in(doc: dict, name: str) -> dict:
    for pool in doc["pools"]:
        if pool["name"] == name:
            return pool
    raise OpenAIError(404, f"no pool named {name!r}", "not_found_error", "pool")


def _sides(pool: dict) -> list[dict]:
    """The parts of a pool's document that hold backends and a price: the pool, or a pair's two sides."""
    return [pool[r] for r in ROLES] if pool.get("prefill") else [pool]


def _side(pool: dict, role: str | None) -> dict:
    """The part of a pool's document for `role`: a unified pool has none, a pair's change must name one."""
    if not pool.get("prefill"):
        if role is not None:
            raise OpenAIError(422, f"pool {pool['name']} is not a prefill/decode pair: give no role", param="role")
        return pool
    if role is None:
        raise OpenAIError(422, f"pool {pool['name']} is a prefill/decode pair: say which role", param="role")
    return pool[role]


def _of(role: str | None) -> str:
    return f" ({role})" if role else ""


def _backend_in(pool: dict, url: str, role: str | None = None) -> tuple[dict, str]:
    """The side of the pool that holds the backend `url` names (the pool, or the pair's side, of `role` if given)
    and its configured spelling there (with or without its credentials)."""
    sides = [_side(pool, role)] if role is not None else _sides(pool)
    for side in sides:
        for configured in side.get("backends", []):
            if backend_id(configured) == backend_id(url):
                return side, configured
    raise OpenAIError(404, f"pool {pool['name']} has no backend {redact(url)}{_of(role)}", "not_found_error", "url")


async def _check_url(request: web.Request, url: str) -> None:
    try:
        await check_resolved(url, _state(request).listener)
    except UnsafeURL as exc:
        raise OpenAIError(422, str(exc), param="url") from None


async def _parse(request: web.Request, model: type[BaseModel]):
    raw = load_json(await request.read())
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(map(str, first["loc"])) or None
        message = redact(f"{param}: {first['msg']}" if param else first["msg"])
        raise OpenAIError(422, message, param=param) from None


ROUTES = [
    Route("GET", "/admin/pools", "List pools with prices, backends and live load", list_pools),
    Route("POST", "/admin/pools", "Add a pool", add_pool, PoolConfig),
    Route("GET", "/admin/pools/{pool}", "Read one pool", get_pool),
    Route("DELETE", "/admin/pools/{pool}", "Remove a pool", remove_pool),
    Route("PUT", "/admin/pools/{pool}/price", "Set one pool's price ($/h per replica)", set_price, PriceBody),
    Route("PUT", "/admin/prices", "Set several pools' prices at once (a spot price change)", set_prices, PricesBody),
    Route("POST", "/admin/pools/{pool}/backends", "Add a backend to a pool", add_backend, BackendBody),
    Route(
        "POST",
        "/admin/pools/{pool}/backends/drain",
        "Stop sending new requests to a backend",
        drain_backend,
        BackendBody,
    ),
    Route(
        "POST",
        "/admin/pools/{pool}/backends/undrain",
        "Put a drained backend back in service",
        undrain_backend,
        BackendBody,
    ),
    Route(
        "POST",
        "/admin/pools/{pool}/backends/remove",
        "Remove a backend (in-flight requests finish)",
        remove_backend,
        BackendBody,
    ),
    Route("GET", "/admin/slo", "Read the default SLO", get_slo),
    Route("PUT", "/admin/slo", "Change the default SLO", set_slo, SLOConfig),
    Route("GET", "/admin/policy", "Read the active routing policy", get_policy),
    Route("PUT", "/admin/policy", "Change the active routing policy", set_policy, PolicyBody),
    Route(
        "GET", "/admin/predictor", "Accuracy of the request-size predictor, its model and how it learns", get_predictor
    ),
    Route(
        "GET",
        "/admin/status",
        "What the status page shows: per pool price, load, scaling hint and running totals; predictor error",
        get_status,
    ),
    Route("GET", "/admin/scaling", "Scaling hints: desired replicas per pool and role, with their inputs", get_scaling),
    Route("GET", "/admin/keys", "List client keys: limits and spend today (never the keys)", list_keys),
    Route("POST", "/admin/keys", "Make a client key (returned this once)", create_key, KeyBody),
    Route("DELETE", "/admin/keys/{key_id}", "Revoke a client key", revoke_key),
]


def openapi_document() -> dict:
    schemas: dict = {}
    paths: dict = {}
    for route in ROUTES:
        operation: dict = {
            "summary": route.summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK"},
                "401": {"description": "missing or wrong bearer token"},
                "403": {"description": "cross-origin request, or a Host this gateway does not serve"},
                "404": {"description": "no such pool, backend or key"},
                "422": {"description": "invalid change"},
            },
        }
        if route.method in ("POST", "PUT", "DELETE"):
            # a DELETE needs no content type without a body (security.guard)
            operation["responses"]["415"] = {"description": "a change with a body not sent as application/json"}
            operation["responses"]["503"] = {"description": "the shared state store is unreachable"}
        parameters = [name for name in ("pool", "key_id") if "{" + name + "}" in route.path]
        if parameters:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in parameters
            ]
        if route.body is not None:
            schema = route.body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[route.body.__name__] = schema
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}},
            }
            operation["responses"]["400"] = {"description": "body is not JSON"}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ricardo admin API", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def add_admin_routes(app: web.Application) -> None:
    """The routes; who may call them is security.guard's business."""
    document = openapi_document()

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/admin/openapi.json", openapi)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
