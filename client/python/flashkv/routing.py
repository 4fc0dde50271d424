"""The routing header: every call that concerns a sequence carries x-flashkv-sequence, on which a
proxy hashes consistently to reach the replica that holds the sequence's KV (docs/client.md)."""

from .errors import FlashkvError, StatusCode

SEQUENCE_HEADER = "x-flashkv-sequence"
MAX_ROUTING_KEY_BYTES = 256


def validate_routing_key(key: str, field: str) -> None:
    """A routing key travels as an HTTP/2 header value: printable ASCII, at most 256 bytes."""
    data = key.encode("utf-8")
    if len(data) > MAX_ROUTING_KEY_BYTES:
        raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                           f"{field} ({len(data)} bytes) must be at most {MAX_ROUTING_KEY_BYTES} "
                           "bytes to route on")
    if any(b < 0x20 or b > 0x7E for b in data):
        raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                           f"{field} must be printable ASCII to travel in the {SEQUENCE_HEADER} "
                           "header")
