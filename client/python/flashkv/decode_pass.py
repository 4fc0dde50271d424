"""DecodePass: one forward pass of a batch over every layer, as a decode pass of a StepStream.

A decode pass (docs/api.md "Decode passes") lets the server do the per-sequence work of a batched
step (resolve the sequences, reserve their blocks, build the kernels' metadata) once per forward
pass instead of once per layer:

    p = session.begin_pass(ids)                   # nothing sent yet
    for layer in range(num_layers):
        out = p.step(layer, q, k, v)              # layer 0 names the sequences; later layers
                                                  # carry only the tensors and the pass id
    # layer L-1's answer arrived: every layer's length advanced

Layer 0's step carries sequence_ids / num_tokens / token_ids; layers 1..L-1 carry q, k, v (and
`out`) with the pass's T rows and `pass_id`, nothing else. send() queues like StepSession.send
and its output comes back through session.receive(), in request order with everything else on
the stream, so two micro-batches' passes pipeline layer by layer.

Misuse is refused here, before anything is sent, and leaves the pass as it was
(FAILED_PRECONDITION: a layer other than the next one, a pass whose layers were all sent;
INVALID_ARGUMENT: tensors without the pass's T rows, or shaped unlike its layer-0 tensors). What
the server refuses fails the stream (StepSession's rule): the pass is then aborted on the server,
no layer's length changed, and every later send of the session raises that FlashkvError. Ending
the stream (finish(), cancel(), a lost connection) before layer L-1's answer aborts the pass too.

Thread-safety: a pass may be sent to from several threads (its own lock orders the layers; it
is taken before the session's, never after); its outputs are received through the session, one
receiver at a time.
"""

import threading
from typing import Optional, Sequence

from .errors import FlashkvError, StatusCode
from .region import RegionTensor
from .step import build_step_batch_request
from .tensor import shape_string

MAX_PASS_ID = (1 << 64) - 1  # StepBatch.pass_id is a uint64


class DecodePass:
    """Made by StepSession.begin_pass(); see the module doc."""

    def __init__(self, session, pass_id: int, num_layers: int, sequence_ids: Sequence[str],
                 num_tokens: Optional[Sequence[int]], token_ids: Optional[Sequence[int]]):
        self._session = session
        self.pass_id = pass_id
        self.num_layers = num_layers
        self.sequence_ids = list(sequence_ids)
        self.num_tokens = None if num_tokens is None else [int(n) for n in num_tokens]
        self.token_ids = None if token_ids is None else [int(t) for t in token_ids]
        # T: every layer's q, k, v and out carry this many rows.
        self.rows = len(self.sequence_ids) if self.num_tokens is None else sum(self.num_tokens)
        self._lock = threading.Lock()
        self._next_layer = 0
        self._shapes = None  # layer 0's (q, k, v) shapes, which every later layer repeats

    @property
    def next_layer(self) -> int:
        """The layer whose step the pass sends next (num_layers once every layer was sent)."""
        with self._lock:
            return self._next_layer

    @property
    def sent_all(self) -> bool:
        """Every layer's step is on the wire: the pass commits with layer L-1's answer."""
        return self.next_layer == self.num_layers

    def send(self, layer: int, q, k, v, *, out: Optional[RegionTensor] = None,
             dtype=None) -> int:
        """Queues the pass's step of `layer` (q [T,Hq,D], k, v [T,Hkv,D]: arrays, torch tensors
        or RegionTensors; `out` a RegionTensor that receives the output in place). Returns the
        step_id; session.receive() returns its output [T,Hq,D] (out.array when `out` is
        given)."""
        with self._lock:
            self._check_layer(layer)
            begin = layer == 0
            request, expected = build_step_batch_request(
                layer, self.sequence_ids if begin else (), q, k, v,
                num_tokens=self.num_tokens if begin else None,
                token_ids=self.token_ids if begin else None, out=out, dtype=dtype)
            request.batch.pass_id = self.pass_id
            shapes = self._check_shapes(request.batch)
            step_id = self._session._send(request, expected)
            # Queued: from here on the server owns what happens to this layer.
            self._shapes = self._shapes or shapes
            self._next_layer += 1
            if self._next_layer == self.num_layers:
                self._session._pass_sent(self.pass_id)
            return step_id

    def step(self, layer: int, q, k, v, *, out: Optional[RegionTensor] = None, dtype=None):
        """send() then session.receive(), for a caller with nothing else in flight."""
        self.send(layer, q, k, v, out=out, dtype=dtype)
        return self._session.receive()

    def _check_layer(self, layer: int) -> None:
        if self._next_layer == self.num_layers:
            raise FlashkvError(StatusCode.FAILED_PRECONDITION,
                               f"pass {self.pass_id}: all {self.num_layers} layers were sent; "
                               "begin a new pass for the next tokens")
        if layer != self._next_layer:
            raise FlashkvError(StatusCode.FAILED_PRECONDITION,
                               f"layer: pass {self.pass_id} expects layer {self._next_layer} "
                               f"next, not {layer}")

    def _check_shapes(self, batch):
        shapes = tuple(tuple(int(d) for d in getattr(batch, name).shape) for name in "qkv")
        for name, shape in zip("qkv", shapes):
            if not shape or shape[0] != self.rows:
                raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                                   f"{name}.shape {shape_string(shape)}: pass {self.pass_id} "
                                   f"has T = {self.rows} rows (its sequences' new tokens)")
        if self._shapes is not None and shapes != self._shapes:
            raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                               f"pass {self.pass_id}: q/k/v shapes "
                               f"{', '.join(shape_string(s) for s in shapes)} differ from layer "
                               f"0's {', '.join(shape_string(s) for s in self._shapes)}")
        return shapes


def check_pass_arguments(pass_id: int, sequence_ids, num_tokens) -> None:
    """What begin_pass needs to know T and to name the pass on the wire."""
    if not 0 < pass_id <= MAX_PASS_ID:
        raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                           f"pass_id ({pass_id}) must be in [1, 2^64 - 1]")
    if isinstance(sequence_ids, (str, bytes)):
        raise TypeError("sequence_ids must be a sequence of ids, not one id")
    if len(sequence_ids) == 0:
        raise FlashkvError(StatusCode.INVALID_ARGUMENT, "sequence_ids is empty: a pass needs "
                                                        "at least one sequence")
    if num_tokens is not None:
        if len(num_tokens) != len(sequence_ids):
            raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                               f"num_tokens has {len(num_tokens)} values; it must have one per "
                               f"sequence id ({len(sequence_ids)}) or be None (one each)")
        for i, n in enumerate(num_tokens):
            if int(n) < 1:
                raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                                   f"num_tokens[{i}] = {n} must be >= 1")
