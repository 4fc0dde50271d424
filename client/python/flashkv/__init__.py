"""flashkv: the Python client of the flashkv attention service (flashkv.v1 over gRPC).

    import flashkv
    with flashkv.Client("127.0.0.1:50051") as client:
        info = client.cache_info()
        client.create_sequence("seq-1")
        out, = client.step(0, [("seq-1", q, k, v)])        # numpy or torch, fp16/bf16/fp32

See docs/client.md ("Python client") for the whole API.
"""

from . import reference
from .channel import ChannelConfig, TlsConfig, TransportOptions, create_channel
from .client import AttentionResult, Client
from .decode_pass import DecodePass
from .errors import FlashkvError, StatusCode
from .region import RegionTensor, SharedRegion
from .routing import SEQUENCE_HEADER, validate_routing_key
from .step import StepInput
from .step_session import StepSession
from .tensor import (BF16, FP16, FP32, bf16_bits_to_float32, float_to_bf16_bits, from_proto,
                     to_float32, to_proto)
from .v1 import attention_pb2, kvcache_pb2, region_pb2, tensor_pb2  # noqa: F401  (messages)

__version__ = "0.1.0"

__all__ = [
    "AttentionResult", "BF16", "ChannelConfig", "Client", "DecodePass", "FP16", "FP32",
    "FlashkvError", "RegionTensor", "SEQUENCE_HEADER", "SharedRegion", "StatusCode", "StepInput",
    "StepSession", "TlsConfig", "TransportOptions", "attention_pb2", "bf16_bits_to_float32",
    "region_pb2", "create_channel", "float_to_bf16_bits", "from_proto", "kvcache_pb2",
    "reference", "tensor_pb2", "to_float32", "to_proto", "validate_routing_key",
]
