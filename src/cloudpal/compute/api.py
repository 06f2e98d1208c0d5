"""Control-API routes of the compute pillar (the owner's `cloudpal app ...` commands).

Handlers are coroutines: a wake or an install awaits QEMU and mkfs without blocking the loop, so
traffic for other apps keeps flowing while one app boots.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloudpal.compute.apps import AppService
from cloudpal.errors import CloudPalError, InvalidInput

Call = Callable[[dict[str, Any], dict[str, Any], Any], Awaitable[Any]]


async def _body(request: Request) -> dict[str, Any]:
    from cloudpal.control import parse_json_body

    return parse_json_body(await request.body())


def _route(path: str, methods: list[str], fn: Call) -> Route:
    async def endpoint(request: Request) -> Response:
        from cloudpal.control import error_status

        try:
            result = await fn(dict(request.path_params), await _body(request), request.query_params)
            return JSONResponse(result)
        except CloudPalError as exc:
            return JSONResponse({"error": str(exc)}, status_code=error_status(exc))
    return Route(path, endpoint, methods=methods)


def app_routes(apps: AppService) -> list[Route]:
    async def listing(p: Any, b: Any, q: Any) -> Any:
        await apps.accelerator()
        return {"accel": apps.accel, "driver": apps.driver.name, "apps": apps.list_apps()}

    async def install(p: Any, b: dict[str, Any], q: Any) -> Any:
        name = b.get("name")
        if not isinstance(name, str):
            raise InvalidInput("an app name is required")
        settings = b.get("settings") or {}
        if not isinstance(settings, dict):
            raise InvalidInput("settings must be an object")
        return await apps.install(name, b.get("image"), settings, upgrade=bool(b.get("upgrade")))

    async def show(p: dict[str, Any], b: Any, q: Any) -> Any:
        return apps.describe(apps.get(p["name"]))

    async def start(p: dict[str, Any], b: Any, q: Any) -> Any:
        return await apps.start_app(p["name"])

    async def stop(p: dict[str, Any], b: Any, q: Any) -> Any:
        return await apps.stop_app(p["name"])

    async def remove(p: dict[str, Any], b: Any, q: Any) -> Any:
        return await apps.remove(p["name"])

    async def settings(p: dict[str, Any], b: dict[str, Any], q: Any) -> Any:
        return await apps.update_settings(p["name"], b)

    async def usage(p: Any, b: Any, q: Any) -> Any:
        return apps.usage()

    async def events(p: Any, b: Any, q: Any) -> Any:
        name = q.get("app") or None
        return apps.events(name)

    async def store(p: Any, b: Any, q: Any) -> Any:
        return {"image_store": str(apps.image_store)}

    return [
        _route("/apps", ["GET"], listing),
        _route("/apps", ["POST"], install),
        _route("/apps-usage", ["GET"], usage),
        _route("/apps-events", ["GET"], events),
        _route("/apps-store", ["GET"], store),
        _route("/apps/{name}", ["GET"], show),
        _route("/apps/{name}", ["DELETE"], remove),
        _route("/apps/{name}/start", ["POST"], start),
        _route("/apps/{name}/stop", ["POST"], stop),
        _route("/apps/{name}/settings", ["POST"], settings),
    ]
