"""`python3 -m flashkv`: health, info, stats and a checked stateless attention call, with the
flags and exit codes of the C++ `flashkv` CLI (docs/client.md):

  0 success, 1 the call failed (code and message on stderr; with --json also on stdout),
  2 usage error, 3 health not SERVING, 4 attention output beyond tolerance of the float64
  reference.
"""

import argparse
import json
import sys

import numpy as np
from google.protobuf import json_format

from . import reference
from .channel import TlsConfig
from .client import Client
from .errors import FlashkvError
from .tensor import bf16_bits_to_float32, float_to_bf16_bits

EXIT_OK, EXIT_CALL_FAILED, EXIT_USAGE, EXIT_NOT_SERVING, EXIT_MISMATCH = 0, 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m flashkv",
                                description="Talk to a flashkv server (flashkv.v1 over gRPC).")
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port or unix:/path")
    p.add_argument("--tls", action="store_true", help="use TLS")
    p.add_argument("--tls-ca", default="", help="PEM roots (default: system roots)")
    p.add_argument("--tls-cert", default="", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", default="", help="client key (mutual TLS)")
    p.add_argument("--tls-server-name", default="", help="name to check the certificate for")
    p.add_argument("--token-file", default="", help="file holding a bearer token")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call (0: none)")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True)
    h = sub.add_parser("health", help="grpc.health.v1 check")
    h.add_argument("--service", default="")
    h.add_argument("--wait", type=float, default=0.0, help="poll up to S seconds for SERVING")
    sub.add_parser("info", help="model shape, page size, blocks, capacity")
    sub.add_parser("stats", help="server counters")
    a = sub.add_parser("attention", help="one stateless call, checked against float64")
    a.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    a.add_argument("--batch", type=int, default=2)
    a.add_argument("--seqlen-q", type=int, default=16)
    a.add_argument("--seqlen-kv", type=int, default=16)
    a.add_argument("--heads-q", type=int, default=8)
    a.add_argument("--heads-kv", type=int, default=8)
    a.add_argument("--head-dim", type=int, default=128)
    a.add_argument("--causal", action="store_true")
    a.add_argument("--scale", type=float, default=None)
    a.add_argument("--seed", type=int, default=0)
    return p


def _client(args) -> Client:
    token = ""
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise _UsageError(f"--token-file '{args.token_file}': {e.strerror}") from None
    tls = TlsConfig(enabled=args.tls, root_certs_file=args.tls_ca,
                    client_cert_file=args.tls_cert, client_key_file=args.tls_key,
                    server_name_override=args.tls_server_name)
    return Client(args.target, tls=tls, bearer_token=token, default_timeout=args.timeout)


class _UsageError(Exception):
    pass


def _print(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=2) if args.json else text)


def _message_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     including_default_value_fields=True)


def _health(client: Client, args) -> int:
    if args.wait > 0:
        try:
            client.wait_for_serving(args.wait, args.service)
        except FlashkvError:
            pass  # reported below, from one last check
    state = client.check_health(args.service)
    _print(args, {"service": args.service, "status": state}, state)
    return EXIT_OK if state == "SERVING" else EXIT_NOT_SERVING


def _info(client: Client, args) -> int:
    info = client.cache_info()
    d = _message_dict(info)
    text = "\n".join(f"{k}: {v}" for k, v in d.items())
    _print(args, d, text)
    return EXIT_OK


def _stats(client: Client, args) -> int:
    d = _message_dict(client.stats())
    text = "\n".join(f"{k}: {v}" for k, v in d.items() if k != "devices")
    for dev in d.get("devices", []):
        text += "\ndevice " + ", ".join(f"{k}={v}" for k, v in dev.items())
    _print(args, d, text)
    return EXIT_OK


def _attention(client: Client, args) -> int:
    rng = np.random.default_rng(args.seed)
    qshape = (args.batch, args.seqlen_q, args.heads_q, args.head_dim)
    kvshape = (args.batch, args.seqlen_kv, args.heads_kv, args.head_dim)
    q, k, v = (rng.uniform(-1, 1, s) for s in (qshape, kvshape, kvshape))
    # Round to the wire dtype first, so the reference sees exactly the bytes sent.
    if args.dtype == "bf16":
        q, k, v = (float_to_bf16_bits(x) for x in (q, k, v))
        exact = [bf16_bits_to_float32(x) for x in (q, k, v)]
    else:
        np_dtype = np.float16 if args.dtype == "fp16" else np.float32
        q, k, v = (x.astype(np_dtype) for x in (q, k, v))
        exact = [q, k, v]
    result = client.attention(q, k, v, causal=args.causal, softmax_scale=args.scale,
                              return_lse=True, dtype=args.dtype)
    want, want_lse = reference.attention_fixed(*exact, causal=args.causal,
                                               softmax_scale=args.scale)
    max_err, bad = reference.max_violation(result.out, want, args.dtype)
    finite = np.isfinite(want_lse)
    lse_err = float(np.abs(result.lse[finite] - want_lse[finite]).max()) if finite.any() else 0.0
    bad += int((np.isfinite(result.lse) != finite).sum())
    atol, rtol = reference.TOLERANCES[args.dtype]
    d = {"dtype": args.dtype, "q_shape": list(qshape), "kv_shape": list(kvshape),
         "causal": args.causal, "max_abs_error": max_err, "lse_max_abs_error": lse_err,
         "mismatched_elements": bad, "atol": atol, "rtol": rtol}
    _print(args, d, f"attention {args.dtype} q{list(qshape)} kv{list(kvshape)}: max error "
                    f"{max_err:.3g} (lse {lse_err:.3g}), {bad} beyond tolerance")
    return EXIT_OK if bad == 0 else EXIT_MISMATCH


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    commands = {"health": _health, "info": _info, "stats": _stats, "attention": _attention}
    try:
        with _client(args) as client:
            return commands[args.command](client, args)
    except _UsageError as e:
        print(f"flashkv: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FlashkvError as e:
        print(f"flashkv: {e}", file=sys.stderr)
        if e.rpc is None and e.code.name == "INVALID_ARGUMENT":
            return EXIT_USAGE  # caught before any call: unreadable TLS files and the like
        if args.json:
            print(json.dumps({"error": {"code": e.code.name, "message": e.message}}))
        return EXIT_CALL_FAILED
