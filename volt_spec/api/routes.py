"""Routing for the API server: which handler method a request reaches, with what, and the reply.

The Firecracker-like endpoints' bodies are checked here (a JSON object, the fields each needs), so
a handler gets plain arguments and only decides; anything it raises becomes a reply, never a dead
server. Handler calls hold the server's one lock, as Firecracker's single API thread serializes
requests to its VMM.

File descriptors passed with a request (SCM_RIGHTS, `ApiServer(accept_fds=N)`) reach only
`PUT /snapshot/load`, as `snapshot_load(body, fds)`: a tuple valid during the call only, closed by
the server when it returns (a handler that keeps one must os.dup it, and must not close any).
Fds passed with any other route are not an error: the handler never sees them, and the server
closes them. The load's body also gets `_arrived_ns` (when the request's first byte was read,
perf_counter_ns) for timing a restore from the request's arrival; a client cannot set it.
"""

from __future__ import annotations

import json

from volt_spec.api.errors import ApiError
from volt_spec.api.framing import SERVER_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _thread

    from volt_spec.api.handler import ApiHandler

# Kept equal to pyproject's [project].version (tests compare them); reading
# importlib.metadata would drag email and zipfile into the VMM.
SERVER_VERSION = "0.1.0"
VM_STATES = ("Paused", "Resumed")
VERSION_PATHS = ("/", "/version")
# path -> {method: handler method name}; a route exists only if the handler has it.
ROUTES: dict[str, dict[str, str]] = {
    "/vm": {"GET": "get_vm", "PATCH": "set_state"},
    "/actions": {"PUT": "action"},
    "/snapshot/create": {"PUT": "snapshot_create"},
    "/snapshot/load": {"PUT": "snapshot_load"},
}
Reply = tuple[int, "dict | None", tuple]  # (status, JSON body or None, Allow methods)


def dispatch(handler: ApiHandler, lock: _thread.LockType, method: str, path: str, body: bytes,
             fds: tuple = (), arrived_ns: int = 0) -> Reply:
    """Route one request to the handler: (status, JSON body or None, Allow methods). `fds` (the
    request's passed fds) and `arrived_ns` matter only to PUT /snapshot/load; the caller closes
    the fds after this returns."""
    try:
        if path in VERSION_PATHS:
            if method != "GET":
                raise ApiError(405, f"{method} {path}: allowed: GET", allow=("GET",))
            return 200, {"name": SERVER_NAME, "version": SERVER_VERSION}, ()
        methods = {m: getattr(handler, name) for m, name in ROUTES.get(path, {}).items()
                   if hasattr(handler, name)}
        if methods:
            if method not in methods:
                allow = tuple(sorted(methods))
                raise ApiError(405, f"{method} {path}: allowed: {', '.join(allow)}", allow=allow)
            return _call_builtin(lock, method, path, methods[method], body, (fds, arrived_ns))
        return _call_fallback(handler, lock, method, path, body)
    except ApiError as e:
        return e.status, {"fault_message": e.message}, e.allow
    except Exception as e:  # noqa: BLE001 - any handler bug becomes a 500, the server lives on
        return 500, {"fault_message": f"{type(e).__name__}: {e}"}, ()


def _call_builtin(lock: _thread.LockType, method: str, path: str, fn, body: bytes,
                  passed: tuple[tuple, int]) -> Reply:
    """A ROUTES endpoint; `passed` is (fds, arrived_ns), for /snapshot/load only."""
    if method == "GET":
        with lock:
            result = fn()
        if not isinstance(result, dict):
            raise TypeError(f"GET {path} handler returned {type(result).__name__}, not an object")
        return 200, result, ()
    obj = _json_object(body, required=True)
    match path:
        case "/vm":
            state = _only_field(obj, "state")
            if state not in VM_STATES:
                raise ApiError(400, f"state must be one of {', '.join(VM_STATES)}, not {state!r}")
            with lock:
                fn(state)
            return 204, None, ()
        case "/actions":
            action_type = obj.get("action_type")
            if not isinstance(action_type, str):
                raise ApiError(400, "action_type (a string) is required")
            with lock:
                fn(action_type, obj)
            return 204, None, ()
        case "/snapshot/load":
            return _snapshot_load(lock, fn, obj, *passed)
        case _:  # /snapshot/create
            if not isinstance(obj.get("snapshot_path"), str):
                raise ApiError(400, "snapshot_path (a string) is required")
            with lock:
                result = fn(obj)
            return _maybe_body(path, result)


def _snapshot_load(lock: _thread.LockType, fn, obj: dict, fds: tuple, arrived_ns: int) -> Reply:
    """A load names its snapshot by `snapshot_path` or by `fds` (an object naming passed fds by
    role, for a warm VMM); `_arrived_ns` is the server's, never the client's."""
    named = obj.get("fds")
    if "fds" in obj and not isinstance(named, dict):
        raise ApiError(400, "fds must be an object naming the passed fds")
    if named is None and not isinstance(obj.get("snapshot_path"), str):
        raise ApiError(400, "snapshot_path (a string) or fds (an object naming passed fds) is required")
    if named is not None and not fds:
        raise ApiError(400, "fds named but none were passed")
    obj.pop("_arrived_ns", None)
    if arrived_ns > 0:
        obj["_arrived_ns"] = arrived_ns
    with lock:
        result = fn(obj, fds)
    return _maybe_body("/snapshot/load", result)


def _call_fallback(handler: ApiHandler, lock: _thread.LockType, method: str, path: str,
                   body: bytes) -> Reply:
    """A path outside ROUTES goes to the handler's `route(method, path, body)`, if it has one."""
    route = getattr(handler, "route", None)
    if route is None:
        raise ApiError(404, f"no such endpoint: {path}")
    obj = _json_object(body, required=False)
    with lock:
        result = route(method, path, obj)
    if result is None:
        raise ApiError(404, f"no such endpoint: {path}")
    status, payload = result
    if not isinstance(status, int) or not 200 <= status <= 599:
        raise TypeError(f"{method} {path} handler returned status {status!r}")
    if payload is not None and not isinstance(payload, dict):
        raise TypeError(f"{method} {path} handler returned {type(payload).__name__}, not an object")
    return status, (None if status == 204 else payload), ()


def _json_object(body: bytes, *, required: bool) -> dict | None:
    if not body:
        if required:
            raise ApiError(400, "a JSON object body is required")
        return None
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"body must be a JSON object, not {type(obj).__name__}")
    return obj


def _only_field(obj: dict, field: str) -> object:
    unknown = sorted(set(obj) - {field})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    if field not in obj:
        raise ApiError(400, f"{field} is required")
    return obj[field]


def _maybe_body(path: str, result: object) -> Reply:
    if result is None:
        return 204, None, ()
    if not isinstance(result, dict):
        raise TypeError(f"PUT {path} handler returned {type(result).__name__}, not an object")
    return 200, result, ()
