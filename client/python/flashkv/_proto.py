"""The generated protobuf and gRPC modules, with one clear error when they were not generated.

They are made by client/python/generate_protos.py (from a source tree) or by the package build
(`pip install client/python`); see that script for why they are not kept in git.
"""

try:
    from ._health_pb2 import HealthCheckRequest, HealthCheckResponse  # noqa: F401
    from .v1 import attention_pb2, attention_pb2_grpc, kvcache_pb2, kvcache_pb2_grpc  # noqa: F401
    from .v1 import region_pb2, region_pb2_grpc, tensor_pb2  # noqa: F401
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        f"flashkv's generated protobuf modules are missing ({e}). From a source tree run "
        "`/usr/bin/python3 client/python/generate_protos.py` once (needs protoc and "
        "grpc_python_plugin: scripts/setup.sh), or install the package with "
        "`pip install client/python`.") from e

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
