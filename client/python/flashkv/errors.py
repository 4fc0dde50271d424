"""FlashkvError: every failure of a flashkv call, carrying the gRPC status code and message.

The server's code and message arrive unchanged (`NOT_FOUND: sequence 'x' not found`). Failures
that never reached the server and came without a message carry the RPC's name instead, so the
caller sees which call got no answer. Mistakes the client catches before sending (a bad routing
key, an unsendable tensor) are INVALID_ARGUMENT; answers that break the contract (an output
shaped unlike its query, a step_id out of order) are INTERNAL. Mirrors the C++ client's
flashkv::FromGrpcStatus.
"""

from typing import Optional

import grpc

StatusCode = grpc.StatusCode


class FlashkvError(Exception):
    """A failed call: `code` (grpc.StatusCode), `message` (str), `rpc` (the call's name, or None
    for checks made before any call)."""

    def __init__(self, code: grpc.StatusCode, message: str, rpc: Optional[str] = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.rpc = rpc

    def __reduce__(self):  # picklable across processes (multiprocessing runners)
        return (FlashkvError, (self.code, self.message, self.rpc))


def from_rpc_error(error: grpc.RpcError, rpc: str) -> FlashkvError:
    """The FlashkvError of a failed call (a grpc.RpcError that is also a grpc.Call)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or ""
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    if not message:
        message = f"{rpc}: {code.name}"
    return FlashkvError(code, message, rpc)
