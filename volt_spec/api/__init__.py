"""The VMM's HTTP/1.1 API on a Unix socket, Firecracker style.

`server.ApiServer` runs inside volt-vmm; `client.ApiClient` is what the `volt`
CLI and runner use. Import those submodules directly: this package imports
only the (tiny) exception types, so loading it costs the VMM nothing.
"""

from volt_spec.api.errors import ApiError, ApiUnavailable, SocketInUse

__all__ = ["ApiError", "ApiUnavailable", "SocketInUse"]
