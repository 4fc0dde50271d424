"""StepSession: one KvCacheService.StepStream with pipelining, as the C++ flashkv::StepSession.

send() queues a request and returns at once; receive() returns the answers in request order. A
model runner sends layer l of micro-batch B while micro-batch A's layer l is computed, or the
next forward pass's first layer while it samples, hiding the round trip.

Threads: gRPC's request-consumer thread takes requests from a queue as send() puts them there
(writes go out one at a time, in order); a reader thread keeps a read outstanding, so answers are
drained while the caller works and the server never stalls on a full flow-control window.

Failures: a stream failure (a step's error status, the stream's deadline, a lost connection, an
answer that breaks the contract) fails the waiting request and every later one with that
FlashkvError; open a new session to go on. A Step is all-or-nothing on the server, so requests
that failed this way changed nothing; those answered before the failure did.

Decode passes: begin_pass() returns a DecodePass (flashkv/decode_pass.py) whose layer steps go
out on this stream, their answers coming back through receive() with everything else.

Thread-safety: one thread may send() while another receive()s; one receiver at a time.
"""

import collections
import queue
import threading
from typing import Callable, Optional, Sequence

import grpc

from .decode_pass import DecodePass, check_pass_arguments
from .errors import FlashkvError, StatusCode, from_rpc_error
from .routing import validate_routing_key
from .step import (StepExpectation, build_step_batch_request, build_step_request,
                   check_step_response, expectation_for)

_CLOSE = object()  # ends the request iterator (half-close)


class _End:
    """The stream's end, as the reader thread saw it: None for OK."""

    def __init__(self, error: Optional[FlashkvError]):
        self.error = error


class StepSession:
    """Created by Client.open_step_session(); usable as a context manager (finish() on a clean
    exit, cancel() when the block raises)."""

    def __init__(self, start, routing_key: str, max_in_flight: int,
                 response_timeout: Optional[float],
                 num_layers: Optional[Callable[[], int]] = None):
        # start(request_iterator, routing_key) issues the RPC and returns the call.
        self._start = start
        # num_layers() asks the server for the model's layer count (GetCacheInfo), once, at the
        # first begin_pass that does not give it.
        self._num_layers_source = num_layers
        self._num_layers: Optional[int] = None
        self._live_passes = set()  # ids of passes begun here whose layers are not all sent
        self._next_pass_id = 1
        self._routing_key = routing_key
        self._max_in_flight = max_in_flight
        self._response_timeout = response_timeout
        self._lock = threading.Lock()
        self._requests = queue.SimpleQueue()
        self._responses = queue.SimpleQueue()  # responses, then one _End
        self._expected = collections.deque()  # StepExpectation, oldest first
        self._next_step_id = 1
        self._call = None
        self._reader = None
        self._failure: Optional[FlashkvError] = None
        self._closed = False
        self._final: Optional[_End] = None

    # ----- sending ---------------------------------------------------------------------------

    def send(self, layer: int, entries, step_id: int = 0, dtype=None) -> int:
        """Queues one Step (entries as for Client.step). A zero step_id takes the session's next
        (1, 2, ...). Returns the step_id its answer will echo."""
        request, expected = build_step_request(layer, entries, step_id, dtype)
        return self._send(request, expected)

    def send_batch(self, layer: int, sequence_ids, q, k, v, *, num_tokens=None, token_ids=None,
                   out=None, step_id: int = 0, dtype=None) -> int:
        """Queues one batched Step (arguments as for Client.step_batch); its receive() returns
        the batch's one output [T,Hq,D] (out.array when `out` is given)."""
        request, expected = build_step_batch_request(layer, sequence_ids, q, k, v,
                                                     num_tokens=num_tokens, token_ids=token_ids,
                                                     out=out, step_id=step_id, dtype=dtype)
        return self._send(request, expected)

    def send_request(self, request) -> int:
        """Queues a flashkv.v1.StepRequest built by the caller (outputs come back as numpy)."""
        copy = type(request)()
        copy.CopyFrom(request)
        return self._send(copy, expectation_for(copy))

    def begin_pass(self, sequence_ids: Sequence[str], *,
                   num_tokens: Optional[Sequence[int]] = None,
                   token_ids: Optional[Sequence[int]] = None, pass_id: int = 0,
                   num_layers: Optional[int] = None) -> DecodePass:
        """A decode pass over `sequence_ids` (each level: the same length on every layer), with
        num_tokens[i] new tokens each (one each when None) and optional token_ids (one per new
        token). Nothing is sent until its layer-0 step. A zero pass_id takes the session's next
        unused one; num_layers defaults to the server's (GetCacheInfo, asked once)."""
        check_pass_arguments(pass_id or 1, sequence_ids, num_tokens)
        layers = num_layers if num_layers is not None else self._model_layers()
        if layers < 1:
            raise FlashkvError(StatusCode.INVALID_ARGUMENT, f"num_layers ({layers}) must be >= 1")
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if pass_id == 0:
                while self._next_pass_id in self._live_passes:
                    self._next_pass_id += 1
                pass_id = self._next_pass_id
                self._next_pass_id += 1
            elif pass_id in self._live_passes:
                raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                                   f"pass_id {pass_id} names a pass of this session that is "
                                   "still sending its layers")
            self._live_passes.add(pass_id)
        return DecodePass(self, pass_id, layers, sequence_ids, num_tokens, token_ids)

    def _model_layers(self) -> int:
        if self._num_layers is None:
            if self._num_layers_source is None:
                raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                                   "begin_pass needs num_layers: this session cannot ask the "
                                   "server")
            self._num_layers = int(self._num_layers_source())
        return self._num_layers

    def _pass_sent(self, pass_id: int) -> None:
        # The pass's last layer is queued: the server frees its id once it takes that step.
        with self._lock:
            self._live_passes.discard(pass_id)

    def _send(self, request, expected: StepExpectation) -> int:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise FlashkvError(StatusCode.FAILED_PRECONDITION, "StepSession already finished")
            if len(self._expected) >= self._max_in_flight:
                raise FlashkvError(StatusCode.FAILED_PRECONDITION,
                                   f"{len(self._expected)} requests await receive() "
                                   f"(max_in_flight {self._max_in_flight}): receive first")
            if request.step_id == 0:
                request.step_id = self._next_step_id
                self._next_step_id += 1
            expected.step_id = request.step_id
            if self._call is None:
                self._open(request)
            self._expected.append(expected)
            self._requests.put(request)
            return request.step_id

    def _open(self, first_request) -> None:
        key = self._routing_key
        if not key:
            if first_request.entries:
                key = first_request.entries[0].sequence_id
            elif first_request.batch.sequence_ids:
                key = first_request.batch.sequence_ids[0]
            else:
                raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                                   "the first request of a StepSession without a routing_key "
                                   "needs an entry to take the routing key from")
        validate_routing_key(key, "routing key")
        self._call = self._start(self._request_iterator(), key)
        self._reader = threading.Thread(target=self._read, name="flashkv-step-reader",
                                        daemon=True)
        self._reader.start()

    def _request_iterator(self):
        while True:
            request = self._requests.get()
            if request is _CLOSE:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
            self._responses.put(_End(None))
        except grpc.RpcError as e:
            self._responses.put(_End(from_rpc_error(e, "StepStream")))

    # ----- receiving -------------------------------------------------------------------------

    def receive(self) -> list:
        """The outputs of the oldest request not yet received (one array or tensor per entry,
        in the form of the entry's q). Blocks until it arrives or the stream fails."""
        with self._lock:
            if not self._expected:
                raise FlashkvError(StatusCode.FAILED_PRECONDITION, "no request in flight")
            if self._failure is not None:
                self._expected.popleft()
                raise self._failure
        item = self._next_item()
        with self._lock:
            expected = self._expected.popleft()
            if self._failure is None and isinstance(item, _End):
                self._failure = item.error or FlashkvError(
                    StatusCode.INTERNAL,
                    "StepStream ended with OK before answering every request", "StepStream")
            if self._failure is not None:
                raise self._failure
            try:
                return check_step_response(expected, item)
            except FlashkvError as e:
                self._fail_locked(e)
                raise

    def _next_item(self):
        if self._final is not None:
            return self._final
        try:
            item = self._responses.get(timeout=self._response_timeout)
        except queue.Empty:
            error = FlashkvError(StatusCode.DEADLINE_EXCEEDED,
                                 f"StepStream: no response within {self._response_timeout} s; "
                                 "stream cancelled", "StepStream")
            with self._lock:
                self._fail_locked(error)
            return _End(error)
        if isinstance(item, _End):
            self._final = item
        return item

    def _fail_locked(self, error: FlashkvError) -> None:
        if self._failure is None:
            self._failure = error
        if self._call is not None:
            self._call.cancel()
        self._requests.put(_CLOSE)

    def step(self, layer: int, entries, dtype=None) -> list:
        """send() then receive(), for a caller with nothing else in flight."""
        self.send(layer, entries, dtype=dtype)
        return self.receive()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._expected)

    # ----- ending ----------------------------------------------------------------------------

    def finish(self) -> None:
        """Half-closes the stream and waits for the server's final status; answers not yet
        received are discarded. Raises the stream's failure, if any. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._requests.put(_CLOSE)
            reader = self._reader
        if reader is not None:
            reader.join()
        with self._lock:
            self._expected.clear()
            if self._failure is None and reader is not None:
                while self._final is None:  # discard answers nobody received
                    item = self._responses.get()
                    if isinstance(item, _End):
                        self._final = item
                self._failure = self._final.error
            if self._failure is not None:
                raise self._failure

    def cancel(self) -> None:
        """Cancels the stream (requests in flight fail with CANCELLED) without waiting."""
        with self._lock:
            self._closed = True
            self._fail_locked(FlashkvError(StatusCode.CANCELLED, "StepSession cancelled",
                                           "StepStream"))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.cancel()
            return False
        self.finish()
        return False

    def __del__(self):
        # An abandoned session must not leave gRPC's request thread blocked on the queue.
        try:
            if self._call is not None and not self._closed:
                self._call.cancel()
                self._requests.put(_CLOSE)
        except Exception:  # interpreter shutdown: nothing left to release
            pass
