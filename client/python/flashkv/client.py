"""flashkv.Client: every RPC of flashkv.v1 (AttentionService, KvCacheService) and
grpc.health.v1, with errors raised as FlashkvError carrying the gRPC code and message.

Mirrors the C++ flashkv::Client (docs/client.md):
- Routing: every call that concerns a sequence (CreateSequence, ForkSequence, FreeSequence,
  Step, StepStream) carries the metadata header x-flashkv-sequence, on which a proxy hashes to
  reach the replica holding the sequence. Its value is `routing_key` when given, else the
  sequence id (ForkSequence: the parent's; Step: the first entry's). A runner that batches
  several sequences into one Step or one stream gives them one routing key for their whole life.
- `bearer_token` goes as "authorization: Bearer <token>" on every call (use TLS or a Unix
  socket: over plaintext TCP it is readable on the wire).
- Timeouts are seconds: `timeout=None` takes the client's default_timeout, `math.inf` (or a
  default of 0) means no deadline.

Thread-safety: a Client may be used from any number of threads at once (gRPC channels and stubs
are thread-safe). StepSessions it opens must not outlive it.
"""

import math
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import grpc

from . import _proto
from .channel import ChannelConfig, TlsConfig, TransportOptions, create_channel
from .errors import FlashkvError, StatusCode, from_rpc_error
from .routing import SEQUENCE_HEADER, validate_routing_key
from .step import (build_step_batch_request, build_step_request, check_step_response,
                   expectation_for)
from .region import RegionTensor, SharedRegion, fill_inputs
from .step_session import StepSession
from .tensor import FP32, from_proto

HEALTH_STATES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


@dataclass
class AttentionResult:
    out: object  # like q: [B,Sq,Hq,D] (fixed) or [Tq,Hq,D] (varlen)
    lse: object = None  # float32 [B,Hq,Sq] / [Hq,Tq] when asked for


class Client:
    """A connection to one flashkv server (or proxy). Usable as a context manager."""

    def __init__(self, target: str = "127.0.0.1:50051", *, tls: Optional[TlsConfig] = None,
                 bearer_token: str = "", default_timeout: float = 60.0,
                 transport: Optional[TransportOptions] = None,
                 dedicated_connection: bool = False, channel: Optional[grpc.Channel] = None):
        """Builds the channel (no connection yet) to `target`: "host:port" or "unix:/path".
        `channel`: use this channel instead (target, tls and transport are then ignored)."""
        if channel is None:
            config = ChannelConfig(target=target, tls=tls or TlsConfig(),
                                   transport=transport or TransportOptions(),
                                   dedicated_connection=dedicated_connection)
            channel = create_channel(config)
        self._channel = channel
        self._metadata = (("authorization", f"Bearer {bearer_token}"),) if bearer_token else ()
        self._default_timeout = default_timeout
        self._attention = _proto.attention_pb2_grpc.AttentionServiceStub(channel)
        self._kvcache = _proto.kvcache_pb2_grpc.KvCacheServiceStub(channel)
        self._regions = _proto.region_pb2_grpc.RegionServiceStub(channel)
        self._health_check = channel.unary_unary(
            _proto.HEALTH_CHECK_METHOD,
            request_serializer=_proto.HealthCheckRequest.SerializeToString,
            response_deserializer=_proto.HealthCheckResponse.FromString)

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ----- plumbing --------------------------------------------------------------------------

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        t = self._default_timeout if timeout is None else timeout
        return None if (t is None or t <= 0 or math.isinf(t)) else t

    def _call_metadata(self, routing_key: Optional[str]):
        if routing_key is None:
            return self._metadata
        validate_routing_key(routing_key, "routing key")
        return self._metadata + ((SEQUENCE_HEADER, routing_key),)

    def _invoke(self, rpc: str, method, request, routing_key=None, timeout=None,
                wait_for_ready=False):
        metadata = self._call_metadata(routing_key)
        try:
            return method(request, timeout=self._timeout(timeout), metadata=metadata,
                          wait_for_ready=wait_for_ready or None)
        except grpc.RpcError as e:
            raise from_rpc_error(e, rpc) from None

    # ----- health and info -------------------------------------------------------------------

    def check_health(self, service: str = "", *, timeout: Optional[float] = None,
                     wait_for_ready: bool = False) -> str:
        """grpc.health.v1.Health/Check: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" (also for a
        service the server does not know) or "UNKNOWN". `service` empty: the whole server."""
        request = _proto.HealthCheckRequest(service=service)
        try:
            response = self._invoke("Health.Check", self._health_check, request, None, timeout,
                                    wait_for_ready)
        except FlashkvError as e:
            if e.code == StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise
        return HEALTH_STATES.get(response.status, "UNKNOWN")

    def wait_for_serving(self, timeout: float = 30.0, service: str = "") -> None:
        """Polls health until SERVING; UNAVAILABLE (or the last state) after `timeout` s."""
        end = time.monotonic() + timeout
        state, last_error = None, None
        while time.monotonic() < end:
            try:
                state = self.check_health(service, timeout=min(1.0, timeout))
                if state == "SERVING":
                    return
            except FlashkvError as e:
                last_error = e
            time.sleep(0.05)
        detail = f"health is {state}" if state else f"last error: {last_error}"
        raise FlashkvError(StatusCode.UNAVAILABLE,
                           f"server not SERVING within {timeout} s ({detail})", "Health.Check")

    def cache_info(self, *, timeout: Optional[float] = None):
        """flashkv.v1.CacheInfo: the model shape, page size, blocks, max_context, backend."""
        return self._invoke("GetCacheInfo", self._kvcache.GetCacheInfo,
                            _proto.kvcache_pb2.GetCacheInfoRequest(), None, timeout)

    def stats(self, *, timeout: Optional[float] = None):
        """flashkv.v1.ServerStats: sequences, blocks, prefix hits, swaps, batches."""
        return self._invoke("GetStats", self._kvcache.GetStats,
                            _proto.kvcache_pb2.GetStatsRequest(), None, timeout)

    # ----- sequences -------------------------------------------------------------------------

    def create_sequence(self, sequence_id: str, prompt_token_ids: Sequence[int] = (), *,
                        routing_key: Optional[str] = None, timeout: Optional[float] = None,
                        wait_for_ready: bool = False) -> int:
        """Creates a sequence; returns cached_tokens: how many leading prompt tokens the server
        already holds (send K/V from that position on)."""
        tokens = [int(t) for t in prompt_token_ids]
        request = _proto.kvcache_pb2.CreateSequenceRequest(sequence_id=sequence_id,
                                                           token_ids=tokens)
        response = self._invoke("CreateSequence", self._kvcache.CreateSequence, request,
                                routing_key or sequence_id, timeout, wait_for_ready)
        if response.cached_tokens > len(tokens):
            raise FlashkvError(StatusCode.INTERNAL,
                               f"CreateSequence: cached_tokens ({response.cached_tokens}) exceeds "
                               f"the prompt ({len(tokens)} tokens)", "CreateSequence")
        return response.cached_tokens

    def fork_sequence(self, parent_id: str, child_id: str, *, routing_key: Optional[str] = None,
                      timeout: Optional[float] = None) -> None:
        """The child starts with the parent's whole context; it lives where the parent does, so
        the call routes on the parent's id."""
        request = _proto.kvcache_pb2.ForkSequenceRequest(parent_id=parent_id, child_id=child_id)
        self._invoke("ForkSequence", self._kvcache.ForkSequence, request,
                     routing_key or parent_id, timeout)

    def free_sequence(self, sequence_id: str, *, routing_key: Optional[str] = None,
                      timeout: Optional[float] = None) -> None:
        request = _proto.kvcache_pb2.FreeSequenceRequest(sequence_id=sequence_id)
        self._invoke("FreeSequence", self._kvcache.FreeSequence, request,
                     routing_key or sequence_id, timeout)

    # ----- steps -----------------------------------------------------------------------------

    def step(self, layer: int, entries, *, step_id: int = 0, dtype=None,
             routing_key: Optional[str] = None, timeout: Optional[float] = None) -> List:
        """One attention layer for a batch of sequences: each entry's K/V are appended at
        `layer` and its queries attend causally to the layer's whole context. `entries`:
        StepInput or (sequence_id, q, k, v[, token_ids]); `dtype` converts the tensors (e.g.
        float32 arrays for a bf16 model). Returns one output [n_i,Hq,D] per entry, like its q."""
        request, expected = build_step_request(layer, entries, step_id, dtype)
        response = self._step(request, routing_key, timeout)
        return check_step_response(expected, response)

    def step_batch(self, layer: int, sequence_ids: Sequence[str], q, k, v, *,
                   num_tokens: Optional[Sequence[int]] = None,
                   token_ids: Optional[Sequence[int]] = None, out: Optional[RegionTensor] = None,
                   step_id: int = 0, dtype=None, routing_key: Optional[str] = None,
                   timeout: Optional[float] = None):
        """One batched Step (docs/api.md "Batched steps"): q [T,Hq,D], k, v [T,Hkv,D] hold every
        sequence's new tokens, sequence i owning the next num_tokens[i] rows (one each when
        num_tokens is None, a decode batch). q, k, v may be RegionTensors (only descriptors
        travel); `out` (a RegionTensor) receives the output in place. Returns the output
        [T,Hq,D] like q (out.array when `out` is given)."""
        request, expected = build_step_batch_request(layer, sequence_ids, q, k, v,
                                                     num_tokens=num_tokens, token_ids=token_ids,
                                                     out=out, step_id=step_id, dtype=dtype)
        response = self._step(request, routing_key, timeout)
        return check_step_response(expected, response)

    def step_raw(self, request, *, routing_key: Optional[str] = None,
                 timeout: Optional[float] = None):
        """A flashkv.v1.StepRequest as built by the caller; returns the checked StepResponse."""
        response = self._step(request, routing_key, timeout)
        check_step_response(expectation_for(request), response)
        return response

    def _step(self, request, routing_key, timeout):
        key = routing_key or (request.entries[0].sequence_id if request.entries
                              else request.batch.sequence_ids[0] if request.batch.sequence_ids
                              else "")
        return self._invoke("Step", self._kvcache.Step, request, key, timeout)

    def open_step_session(self, *, routing_key: Optional[str] = None, max_in_flight: int = 64,
                          timeout: Optional[float] = math.inf,
                          response_timeout: Optional[float] = None,
                          wait_for_ready: bool = False) -> StepSession:
        """Opens one StepStream (on the first send). Its routing key is fixed for the stream's
        life: `routing_key`, else the first request's first entry's sequence id. `timeout`:
        deadline of the whole stream (default none); `response_timeout`: longest wait in
        receive(), past which the stream is cancelled with DEADLINE_EXCEEDED; `max_in_flight`:
        requests sent and not yet received, beyond which send() raises FAILED_PRECONDITION."""
        if max_in_flight < 1:
            raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                               f"max_in_flight ({max_in_flight}) must be >= 1")
        if routing_key:
            validate_routing_key(routing_key, "routing_key")
        deadline = self._timeout(timeout)

        def start(requests, key):
            return self._kvcache.StepStream(requests, timeout=deadline,
                                            metadata=self._call_metadata(key),
                                            wait_for_ready=wait_for_ready or None)

        return StepSession(start, routing_key or "", max_in_flight, response_timeout,
                           num_layers=lambda: self.cache_info().num_layers)

    # ----- shared-memory data plane ---------------------------------------------------------

    def attach_region(self, size: int) -> SharedRegion:
        """Shares `size` bytes of fresh memory with the server (same host only); see
        flashkv/region.py. Tensors made in it (region.empty / region.put) go to attention() as
        descriptors, and `out=` / `lse=` slices receive the outputs in place."""
        return SharedRegion(self._regions, self._metadata, size, self._default_timeout)

    # ----- stateless attention ---------------------------------------------------------------

    def attention(self, q, k, v, *, causal: bool = False, softmax_scale: Optional[float] = None,
                  return_lse: bool = False, dtype=None, out: Optional[RegionTensor] = None,
                  lse: Optional[RegionTensor] = None,
                  timeout: Optional[float] = None) -> AttentionResult:
        """q [B,Sq,Hq,D]; k, v [B,Skv,Hkv,D] -> out [B,Sq,Hq,D] like q, lse [B,Hq,Sq] float32.
        Causal masks are aligned bottom-right; the default scale is 1/sqrt(D). q, k, v may be
        RegionTensors; `out` / `lse` (RegionTensors) receive the outputs in place."""
        request = _proto.attention_pb2.AttentionRequest(causal=causal, return_lse=return_lse)
        wq = self._fill_qkv(request, q, k, v, dtype, out, lse)
        if softmax_scale is not None:
            request.softmax_scale = softmax_scale
        response = self.attention_raw(request, timeout=timeout)
        return self._result(response, wq, return_lse, out, lse)

    def attention_varlen(self, q, k, v, cu_seqlens_q: Sequence[int],
                         cu_seqlens_kv: Sequence[int], *, causal: bool = False,
                         softmax_scale: Optional[float] = None, return_lse: bool = False,
                         dtype=None, out: Optional[RegionTensor] = None,
                         lse: Optional[RegionTensor] = None,
                         timeout: Optional[float] = None) -> AttentionResult:
        """Sequences packed along the token axis: q [Tq,Hq,D], k, v [Tkv,Hkv,D]; sequence b owns
        rows [cu_seqlens[b], cu_seqlens[b+1]). -> out [Tq,Hq,D] like q, lse [Hq,Tq]."""
        request = _proto.attention_pb2.AttentionVarlenRequest(
            causal=causal, return_lse=return_lse,
            cu_seqlens_q=[int(x) for x in cu_seqlens_q],
            cu_seqlens_kv=[int(x) for x in cu_seqlens_kv])
        wq = self._fill_qkv(request, q, k, v, dtype, out, lse)
        if softmax_scale is not None:
            request.softmax_scale = softmax_scale
        response = self.attention_varlen_raw(request, timeout=timeout)
        return self._result(response, wq, return_lse, out, lse)

    def attention_raw(self, request, *, timeout: Optional[float] = None):
        return self._invoke("Attention", self._attention.Attention, request, None, timeout)

    def attention_varlen_raw(self, request, *, timeout: Optional[float] = None):
        return self._invoke("AttentionVarlen", self._attention.AttentionVarlen, request, None,
                            timeout)

    @staticmethod
    def _fill_qkv(request, q, k, v, dtype, out, lse):
        wq = fill_inputs(request, (("q", q), ("k", k), ("v", v)), dtype)
        if out is not None:
            out.fill_slice(request.out)
        if lse is not None:
            lse.fill_slice(request.lse)
        return wq

    @staticmethod
    def _output(message, field, like, dtype, shape, slot: Optional[RegionTensor]):
        """An output as the response describes it: bytes, or the region slice asked for."""
        if not message.HasField("region"):
            return from_proto(message, field, like, dtype, shape)
        if slot is None or (message.region.region_id, message.region.offset) != (
                slot.region.region_id, slot.offset):
            raise FlashkvError(StatusCode.INTERNAL,
                               f"{field} names a region slice the request did not give")
        from_proto(message, field, like, dtype, shape, data_in_region=True)
        return slot.array

    def _result(self, response, wq, want_lse, out_slot=None, lse_slot=None) -> AttentionResult:
        # The answer must carry out shaped like q, in q's dtype, and lse when asked for.
        out = self._output(response.out, "out", wq.like, wq.dtype_name, wq.array.shape, out_slot)
        if not want_lse:
            return AttentionResult(out)
        lse = self._output(response.lse, "lse", wq.like, FP32, None, lse_slot)
        head_dim = wq.array.shape[-1] if wq.array.ndim else 0
        rows = wq.array.size // head_dim if head_dim else 0
        if (lse.numel() if hasattr(lse, "numel") else lse.size) != rows:
            raise FlashkvError(StatusCode.INTERNAL,
                               f"lse has shape {tuple(lse.shape)}; expected one float32 per "
                               "query row and head")
        return AttentionResult(out, lse)
