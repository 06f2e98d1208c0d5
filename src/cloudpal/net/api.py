"""HTTP routes of the network pillar: the owner's control API and the public
enrollment endpoint. Handlers are `async` on purpose: they run on the event
loop one at a time, which is what serializes concurrent CLI calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloudpal.errors import CloudPalError, InvalidInput
from cloudpal.net import enroll
from cloudpal.net.names import parse_duration
from cloudpal.net.service import NetworkService

Handler = Callable[[Request], Awaitable[Response]]


async def _body(request: Request) -> dict[str, Any]:
    from cloudpal.control import parse_json_body

    return parse_json_body(await request.body())


def _lifetime(value: Any) -> int | None:
    if value in (None, "", "never"):
        return None
    if not isinstance(value, str):
        raise InvalidInput("expiry must be a duration such as 30d")
    return parse_duration(value)


def control_routes(net: NetworkService) -> list[Route]:
    def route(path: str, methods: list[str]) -> Callable[[Callable[..., Any]], Route]:
        def wrap(fn: Callable[..., Any]) -> Route:
            async def endpoint(request: Request) -> Response:
                try:
                    result = fn(request.path_params, await _body(request), request.query_params)
                    return JSONResponse(result)
                except CloudPalError as exc:
                    from cloudpal.control import error_status
                    return JSONResponse({"error": str(exc)}, status_code=error_status(exc))
            return Route(path, endpoint, methods=methods)
        return wrap

    @route("/status", ["GET"])
    def status(p: Any, b: Any, q: Any) -> Any:
        return net.status()

    @route("/devices", ["GET"])
    def devices(p: Any, b: Any, q: Any) -> Any:
        return net.list_devices()

    @route("/devices", ["POST"])
    def add(p: Any, b: dict[str, Any], q: Any) -> Any:
        name = b.get("name")
        if not isinstance(name, str):
            raise InvalidInput("a device needs a name")
        return net.add_device(name, b.get("public_key"), bool(b.get("full_tunnel")),
                              _lifetime(b.get("expires")))

    @route("/devices/{name}/config", ["GET"])
    def config(p: dict[str, str], b: Any, q: Any) -> Any:
        return {"config": net.device_config(p["name"])}

    @route("/devices/{name}/rename", ["POST"])
    def rename(p: dict[str, str], b: dict[str, Any], q: Any) -> Any:
        return net.rename_device(p["name"], str(b.get("new_name", "")))

    @route("/devices/{name}/revoke", ["POST"])
    def revoke(p: dict[str, str], b: Any, q: Any) -> Any:
        return net.revoke_device(p["name"])

    @route("/devices/{name}/renew", ["POST"])
    def renew(p: dict[str, str], b: dict[str, Any], q: Any) -> Any:
        return net.renew_device(p["name"], _lifetime(b.get("expires")))

    @route("/invites", ["POST"])
    def invite(p: Any, b: dict[str, Any], q: Any) -> Any:
        uses = b.get("uses", 1)
        if not isinstance(uses, int):
            raise InvalidInput("uses must be a whole number")
        ttl = _lifetime(b.get("ttl") or "1h")
        assert ttl is not None
        return net.create_invite(uses, ttl, bool(b.get("full_tunnel")))

    @route("/invites", ["GET"])
    def invites(p: Any, b: Any, q: Any) -> Any:
        return net.list_invites()

    @route("/acl", ["GET"])
    def policy(p: Any, b: Any, q: Any) -> Any:
        return net.policy_json()

    @route("/acl", ["POST"])
    def apply(p: Any, b: dict[str, Any], q: Any) -> Any:
        text, source = b.get("text"), b.get("source", "policy")
        if not isinstance(text, str):
            raise InvalidInput("the policy text is missing")
        return net.apply_policy(text, str(source))

    @route("/acl/check", ["POST"])
    def check(p: Any, b: dict[str, Any], q: Any) -> Any:
        port = b.get("port")
        if port is not None and not isinstance(port, int):
            raise InvalidInput("port must be a number")
        return net.check(str(b.get("src")), str(b.get("dst")), port, str(b.get("proto", "tcp")))

    return [status, devices, add, config, rename, revoke, renew, invite, invites, policy,
            apply, check]


def enroll_routes(net: NetworkService) -> list[Route]:
    async def endpoint(request: Request) -> Response:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > enroll.MAX_BODY:
                return Response(enroll.error_body("request too large"), status_code=413,
                                media_type="application/json")
        client = request.client.host if request.client else "?"
        status, body = net.enroll(raw, client)
        return Response(body, status_code=status, media_type="application/json")

    return [Route(enroll.PATH, endpoint, methods=["POST"])]
