"""Step requests from typed entries, and the check every Step answer gets against its request.

A StepEntry carries n new tokens of one sequence: q [n,Hq,D], k and v [n,Hkv,D] (docs/api.md).
The answer must carry one output per entry, shaped like the entry's q, in q's dtype, echoing the
request's step_id; anything else is INTERNAL naming the mismatch (as the C++ client's
CheckStepResponse), so nothing reaches the caller unchecked.

A batched Step (StepRequest.batch, docs/api.md "Batched steps") carries the whole batch as one
q [T,Hq,D], k and v [T,Hkv,D] (arrays, or RegionTensors sent as descriptors) with the sequence ids
and their token counts; its answer is one output [T,Hq,D] (batch_out), written into `out` when
that RegionTensor is given.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from . import _proto
from .errors import FlashkvError, StatusCode
from .region import RegionTensor, fill_inputs
from .tensor import NUMPY, Like, dtype_name, fill_proto, from_proto, prepare


@dataclass
class StepInput:
    """n new tokens of one sequence. q [n,Hq,D]; k, v [n,Hkv,D]; token_ids: n of them, or none
    (they let the server publish full pages to its prefix cache)."""
    sequence_id: str
    q: object
    k: object
    v: object
    token_ids: Optional[Sequence[int]] = None


@dataclass
class StepExpectation:
    """What the answer to a request must look like, and the form its outputs take."""
    outputs: List[Tuple[Tuple[int, ...], str, Like]] = field(default_factory=list)
    step_id: int = 0
    # A batched request: (shape, dtype, like, the RegionTensor `out` or None) of its batch_out.
    batch: Optional[Tuple[Tuple[int, ...], str, Like, Optional[RegionTensor]]] = None


def _as_input(entry, index: int) -> StepInput:
    if isinstance(entry, StepInput):
        return entry
    if isinstance(entry, (tuple, list)) and len(entry) in (4, 5):
        return StepInput(*entry)
    raise TypeError(f"entries[{index}] must be a StepInput or a tuple (sequence_id, q, k, v"
                    f"[, token_ids]), not {type(entry).__name__}")


def build_step_request(layer: int, entries, step_id: int = 0,
                       dtype=None) -> Tuple[object, StepExpectation]:
    """A flashkv.v1.StepRequest of `entries` (StepInput or (sequence_id, q, k, v[, token_ids])
    tuples). `dtype` converts every tensor (e.g. float32 arrays for a bf16 model)."""
    request = _proto.kvcache_pb2.StepRequest(layer=layer, step_id=step_id)
    expected = StepExpectation(step_id=step_id)
    for i, raw in enumerate(entries):
        item = _as_input(raw, i)
        entry = request.entries.add()
        entry.sequence_id = item.sequence_id
        q = prepare(item.q, dtype, f"entries[{i}].q")
        fill_proto(q, entry.q)
        fill_proto(prepare(item.k, dtype, f"entries[{i}].k"), entry.k)
        fill_proto(prepare(item.v, dtype, f"entries[{i}].v"), entry.v)
        if item.token_ids is not None:
            entry.token_ids[:] = [int(t) for t in item.token_ids]
        expected.outputs.append((tuple(q.array.shape), q.dtype_name, q.like))
    return request, expected


def build_step_batch_request(layer: int, sequence_ids: Sequence[str], q, k, v, *,
                             num_tokens: Optional[Sequence[int]] = None,
                             token_ids: Optional[Sequence[int]] = None,
                             out: Optional[RegionTensor] = None, step_id: int = 0,
                             dtype=None) -> Tuple[object, StepExpectation]:
    """A batched flashkv.v1.StepRequest: q [T,Hq,D], k, v [T,Hkv,D] for the sequences'
    new tokens, entry i owning the next num_tokens[i] rows (one each when num_tokens is None).
    q, k, v may be RegionTensors (descriptors only); `out` (a RegionTensor) receives the
    output."""
    request = _proto.kvcache_pb2.StepRequest(layer=layer, step_id=step_id)
    batch = request.batch
    batch.sequence_ids[:] = list(sequence_ids)
    if num_tokens is not None:
        batch.num_tokens[:] = [int(n) for n in num_tokens]
    wq = fill_inputs(batch, (("q", q), ("k", k), ("v", v)), dtype, "batch.")
    if out is not None:
        out.fill_slice(batch.out)
    if token_ids is not None:
        batch.token_ids[:] = [int(t) for t in token_ids]
    shape = tuple(int(d) for d in batch.q.shape)
    expected = StepExpectation(step_id=step_id, batch=(shape, wq.dtype_name, wq.like, out))
    return request, expected


def expectation_for(request) -> StepExpectation:
    """The expectation of a request built elsewhere (outputs come back as numpy arrays)."""
    expected = StepExpectation(step_id=request.step_id)
    if request.HasField("batch"):
        try:
            dtype = dtype_name(request.batch.q.dtype)
        except ValueError as e:
            raise FlashkvError(StatusCode.INVALID_ARGUMENT, f"batch.q.dtype: {e}") from None
        expected.batch = (tuple(request.batch.q.shape), dtype, NUMPY, None)
    for i, entry in enumerate(request.entries):
        try:
            dtype = dtype_name(entry.q.dtype)
        except ValueError as e:
            raise FlashkvError(StatusCode.INVALID_ARGUMENT, f"entries[{i}].q.dtype: {e}") from None
        expected.outputs.append((tuple(entry.q.shape), dtype, NUMPY))
    return expected


def check_step_response(expected: StepExpectation, response):
    """The outputs of `response` in entry order (for a batched request, its one output), after
    checking it answers `expected`."""
    if response.step_id != expected.step_id:
        raise FlashkvError(StatusCode.INTERNAL,
                           f"step response out of order: expected step_id {expected.step_id}, "
                           f"got {response.step_id}")
    if (expected.batch is not None) != response.HasField("batch_out"):
        raise FlashkvError(StatusCode.INTERNAL,
                           f"step {expected.step_id}: "
                           + ("no batch_out for a batched request" if expected.batch is not None
                              else "a batch_out for a request of entries"))
    if expected.batch is not None:
        shape, dtype, like, slot = expected.batch
        field_name = f"step {expected.step_id} batch_out"
        message = response.batch_out
        if len(response.out) != 0:
            raise FlashkvError(StatusCode.INTERNAL, f"step {expected.step_id}: out[] for a "
                                                    "batched request")
        if slot is None:
            if message.HasField("region"):
                raise FlashkvError(StatusCode.INTERNAL,
                                   f"{field_name} names a region; the request asked for bytes")
            return from_proto(message, field_name, like, dtype, shape)
        if not message.HasField("region") or (message.region.region_id,
                                              message.region.offset) != (
                slot.region.region_id, slot.offset):
            raise FlashkvError(StatusCode.INTERNAL,
                               f"{field_name} does not name the region slice the request gave")
        from_proto(message, field_name, like, dtype, shape, data_in_region=True)
        return slot.array
    if len(response.out) != len(expected.outputs):
        raise FlashkvError(StatusCode.INTERNAL,
                           f"step {expected.step_id}: {len(response.out)} outputs for "
                           f"{len(expected.outputs)} entries")
    return [from_proto(out, f"step {expected.step_id} out[{i}]", like, dtype, shape)
            for i, (out, (shape, dtype, like)) in enumerate(zip(response.out, expected.outputs))]
