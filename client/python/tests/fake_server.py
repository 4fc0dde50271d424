"""An in-test KvCacheService that records what clients send (metadata above all) and can be told
to misbehave: stall a stream, fail a chosen stream request, answer with a wrong step_id or a
misshaped output. The real server can do none of that on demand. Steps answer out = q (a batched
step: batch_out = batch.q)."""

import threading
import time
from concurrent import futures

import grpc

from flashkv.v1 import attention_pb2, attention_pb2_grpc, kvcache_pb2, kvcache_pb2_grpc, tensor_pb2


class FakeKvCache(kvcache_pb2_grpc.KvCacheServiceServicer):
    def __init__(self):
        self.calls = []  # (method, {metadata key: value}) in arrival order
        self.lock = threading.Lock()
        self.stream_fail_at = None  # (request index, grpc.StatusCode, message)
        self.stream_stall = threading.Event()  # set: StepStream stops answering
        self.wrong_step_id = False
        self.drop_output = False
        self.stream_requests = []  # every StepStream request, in arrival order

    def _record(self, method, context):
        with self.lock:
            self.calls.append((method, dict(context.invocation_metadata())))

    def metadata_of(self, method):
        with self.lock:
            return [md for m, md in self.calls if m == method]

    def GetCacheInfo(self, request, context):
        self._record("GetCacheInfo", context)
        return kvcache_pb2.CacheInfo(num_layers=1, num_q_heads=2, num_kv_heads=1, head_dim=32,
                                     dtype=3, page_size=4, backend="fake")

    def CreateSequence(self, request, context):
        self._record("CreateSequence", context)
        return kvcache_pb2.CreateSequenceResponse()

    def ForkSequence(self, request, context):
        self._record("ForkSequence", context)
        return kvcache_pb2.ForkSequenceResponse()

    def FreeSequence(self, request, context):
        self._record("FreeSequence", context)
        return kvcache_pb2.FreeSequenceResponse()

    def _answer(self, request):
        response = kvcache_pb2.StepResponse(step_id=request.step_id + int(self.wrong_step_id))
        if request.HasField("batch"):
            response.batch_out.CopyFrom(request.batch.q)
        entries = request.entries[:-1] if self.drop_output else request.entries
        for entry in entries:
            response.out.add().CopyFrom(entry.q)
        return response

    def Step(self, request, context):
        self._record("Step", context)
        return self._answer(request)

    def StepStream(self, request_iterator, context):
        self._record("StepStream", context)
        for index, request in enumerate(request_iterator):
            with self.lock:
                self.stream_requests.append(request)
            if self.stream_fail_at is not None and self.stream_fail_at[0] == index:
                context.abort(self.stream_fail_at[1], self.stream_fail_at[2])
            while self.stream_stall.is_set() and context.is_active():
                time.sleep(0.01)
            yield self._answer(request)


class WrongAttention(attention_pb2_grpc.AttentionServiceServicer):
    """Answers every call with well-formed but wrong values: out = q, lse = 0."""

    def Attention(self, request, context):
        b, sq, hq = request.q.shape[:3]
        lse = tensor_pb2.Tensor(dtype=3, shape=[b, hq, sq], data=bytes(4 * b * hq * sq))
        return attention_pb2.AttentionResponse(out=request.q, lse=lse)


class FakeServer:
    """A gRPC server on 127.0.0.1 with FakeKvCache; plaintext, or TLS from PEM bytes."""

    def __init__(self, tls=None):
        self.service = FakeKvCache()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        kvcache_pb2_grpc.add_KvCacheServiceServicer_to_server(self.service, self.server)
        attention_pb2_grpc.add_AttentionServiceServicer_to_server(WrongAttention(), self.server)
        if tls is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            key, cert, client_ca = tls
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                require_client_auth=client_ca is not None)
            port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.target = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self):
        self.server.stop(grace=None)
