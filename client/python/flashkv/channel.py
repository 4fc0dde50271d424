"""Channels to a flashkv server: TCP ("host:port", "dns:///host:port", "ipv4:..."), Unix sockets
("unix:/path", "unix-abstract:name"), plaintext or TLS (optionally mutual).

The channel options are those of the C++ client and the server (proto/transport.cc,
flashkv::MakeChannelArguments): per-layer steps carry megabytes, and gRPC's defaults (64 KiB
stream windows, 16 KiB frames, small socket reads) cost more than the attention itself for
such messages. The receiver's window and frame size bound what the sender may put on the wire,
so both ends apply them.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import grpc

from .errors import FlashkvError, StatusCode

# The figures of proto/transport.cc, with the same reasons.
_STREAM_WINDOW_BYTES = 16 << 20  # two 8 MiB step messages in flight
_MAX_FRAME_BYTES = (1 << 24) - 1  # HTTP/2's largest: a megabyte message in one DATA frame
_WRITE_BUFFER_BYTES = 16 << 20  # few sendmsg calls per large message
_READ_CHUNK_BYTES = 1 << 20
_MIN_READ_CHUNK_BYTES = 256 << 10
_MAX_READ_CHUNK_BYTES = 16 << 20


@dataclass
class TransportOptions:
    """Mirrors flashkv::TransportOptions (flashkv/transport.h)."""
    max_receive_message_bytes: int = 256 << 20
    max_send_message_bytes: int = 256 << 20
    # False keeps gRPC's defaults for windows, frames and reads (for comparisons).
    tuned: bool = True
    # HTTP/2 keepalive pings on idle connections; 0 turns them off. The server accepts pings as
    # often as every 10 s.
    keepalive_time_ms: int = 0
    keepalive_timeout_ms: int = 20_000


@dataclass
class TlsConfig:
    """Mirrors flashkv::TlsConfig. PEM files; an empty root_certs_file uses gRPC's default roots.
    Mutual TLS: both client_cert_file and client_key_file, or neither."""
    enabled: bool = False
    root_certs_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    # Name checked against the server certificate instead of the target's host (tests, IPs).
    server_name_override: str = ""


@dataclass
class ChannelConfig:
    target: str = "127.0.0.1:50051"
    tls: TlsConfig = field(default_factory=TlsConfig)
    transport: TransportOptions = field(default_factory=TransportOptions)
    # Its own TCP connection instead of one shared with every other channel to the same target
    # (gRPC pools subchannels process-wide); load generators use several.
    dedicated_connection: bool = False


def channel_options(config: ChannelConfig) -> List[Tuple[str, object]]:
    t = config.transport
    options = [("grpc.max_receive_message_length", t.max_receive_message_bytes),
               ("grpc.max_send_message_length", t.max_send_message_bytes)]
    if t.tuned:
        options += [("grpc.http2.lookahead_bytes", _STREAM_WINDOW_BYTES),
                    ("grpc.http2.max_frame_size", _MAX_FRAME_BYTES),
                    ("grpc.http2.write_buffer_size", _WRITE_BUFFER_BYTES),
                    ("grpc.experimental.tcp_read_chunk_size", _READ_CHUNK_BYTES),
                    ("grpc.experimental.tcp_min_read_chunk_size", _MIN_READ_CHUNK_BYTES),
                    ("grpc.experimental.tcp_max_read_chunk_size", _MAX_READ_CHUNK_BYTES)]
    if t.keepalive_time_ms > 0:
        # Pings keep a long-lived step stream's connection known alive between bursts.
        options += [("grpc.keepalive_time_ms", t.keepalive_time_ms),
                    ("grpc.keepalive_timeout_ms", t.keepalive_timeout_ms),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.max_pings_without_data", 0)]
    if config.dedicated_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if config.tls.enabled and config.tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", config.tls.server_name_override))
    return options


def _read(path: str, field_name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                           f"{field_name} '{path}' cannot be read: {e.strerror}") from None


def credentials(tls: TlsConfig) -> Optional[grpc.ChannelCredentials]:
    """None for plaintext; TLS credentials from the PEM files otherwise."""
    if not tls.enabled:
        return None
    if bool(tls.client_cert_file) != bool(tls.client_key_file):
        raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                           "tls.client_cert_file and tls.client_key_file go together (mutual "
                           "TLS): set both or neither")
    roots = _read(tls.root_certs_file, "tls.root_certs_file") if tls.root_certs_file else None
    key = _read(tls.client_key_file, "tls.client_key_file") if tls.client_key_file else None
    chain = _read(tls.client_cert_file, "tls.client_cert_file") if tls.client_cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                        certificate_chain=chain)


def create_channel(config: ChannelConfig) -> grpc.Channel:
    """Reads the TLS files and builds the channel; connection happens on the first call."""
    if not config.target:
        raise FlashkvError(StatusCode.INVALID_ARGUMENT, "target must not be empty")
    t = config.transport
    if t.max_receive_message_bytes < 1 or t.max_send_message_bytes < 1:
        raise FlashkvError(StatusCode.INVALID_ARGUMENT, "transport message limits must be >= 1")
    creds = credentials(config.tls)
    options = channel_options(config)
    if creds is None:
        return grpc.insecure_channel(config.target, options=options)
    return grpc.secure_channel(config.target, creds, options=options)
