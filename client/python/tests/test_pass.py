"""Decode passes (docs/api.md "Decode passes") through the Python client against the real server:
a multi-sequence decode over every layer through passes equals plain batched steps and float64
attention; the server's refusals arrive as FlashkvError with their status; a stream ended in the
middle of a pass leaves every sequence's length as it was."""

import time

import numpy as np
import pytest

import flashkv
from conftest import unique
from flashkv import FlashkvError, StatusCode
from test_kvcache import Model

LAYERS = 3


@pytest.fixture(scope="module", params=["fp16", "bf16", "fp32"])
def dtype_server(request, start_server):
    return request.param, start_server(dtype=request.param, layers=LAYERS)


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(dtype="fp16", layers=LAYERS)


def _client(server):
    c = flashkv.Client(server.target, default_timeout=30)
    c.wait_for_serving(30)
    return c


def _batch(m, ids, counts, layer):
    """Fresh entries of `ids` (counts[i] rows each) and their rows stacked: q, k, v."""
    entries = [m.entry(s, layer, n) for s, n in zip(ids, counts)]
    return entries, [np.concatenate([getattr(e, t) for e in entries]) for t in "qkv"]


def _check(m, layer, entries, out):
    """Commits the entries' K/V to the model, then checks each one's rows of the batch output."""
    assert out.shape == (sum(e.q.shape[0] for e in entries),) + entries[0].q.shape[1:]
    rows = np.cumsum([0] + [e.q.shape[0] for e in entries])
    m.commit(layer, entries)
    m.check(layer, entries, [out[rows[i]:rows[i + 1]] for i in range(len(entries))])


def _prefill(c, m, ids, counts):
    """Plain batched steps over every layer (the sequences end level)."""
    for layer in range(LAYERS):
        entries, (q, k, v) = _batch(m, ids, counts, layer)
        _check(m, layer, entries, c.step_batch(layer, ids, q, k, v, num_tokens=counts))


def test_passes_equal_plain_batched_steps_and_float64(dtype_server):
    """Prefill, then decode: two micro-batches as two passes pipelined layer by layer (bytes, and
    a region with a poisoned output slot), the same tensors sent as plain batched steps to twin
    sequences (forks); outputs equal each other bit for bit and float64 attention."""
    dtype, server = dtype_server
    with _client(server) as c, c.attach_region(1 << 20) as region:
        m = Model(c.cache_info(), seed=21)
        ids = [unique("pass") for _ in range(4)]
        twin = {s: unique("plain") for s in ids}
        for s in ids:
            c.create_sequence(s)
        _prefill(c, m, ids, [5, 1, 3, 2])  # the first pass's tokens cross pages (page_size 4)
        for s in ids:
            c.fork_sequence(s, twin[s])
            for layer in range(LAYERS):
                m.kv[(twin[s], layer)] = m.kv[(s, layer)]
        groups = [ids[:2], ids[2:]]
        with c.open_step_session() as session:
            for step, counts in enumerate([[1, 1], [2, 1], [1, 1]]):
                passes = [session.begin_pass(g, num_tokens=counts) for g in groups]
                for layer in range(LAYERS):
                    region.reset()
                    sent = []
                    for g, p in zip(groups, passes):
                        entries, (q, k, v) = _batch(m, g, counts, layer)
                        slot = None
                        if step == 1:
                            slot = region.empty(q.shape, dtype)
                            slot.array[...] = 0xFFFF if dtype == "bf16" else np.nan  # poisoned
                            p.send(layer, region.put(q), region.put(k), region.put(v), out=slot)
                        else:
                            p.send(layer, q, k, v)
                        sent.append((g, entries, (q, k, v), slot))
                    for g, entries, (q, k, v), slot in sent:
                        out = session.receive()
                        assert slot is None or out is slot.array
                        _check(m, layer, entries, out)
                        twins = [twin[s] for s in g]
                        plain = c.step_batch(layer, twins, q, k, v, num_tokens=counts)
                        m.commit(layer, [flashkv.StepInput(twin[e.sequence_id], e.q, e.k, e.v)
                                         for e in entries])
                        np.testing.assert_array_equal(plain, out)
                assert all(p.sent_all for p in passes)
        for s in ids:
            c.free_sequence(s)
            c.free_sequence(twin[s])


def test_server_refusals_arrive_with_their_status(server):
    with _client(server) as c:
        m = Model(c.cache_info(), seed=22)
        seq, ahead = unique(), unique("ahead")
        c.create_sequence(seq)
        c.create_sequence(ahead)
        _prefill(c, m, [seq], [2])

        def qkv(rows=1):
            return _batch(m, ["x"] * rows, [1] * rows, 0)[1]

        cases = []
        # An unknown sequence: the begin step fails, NOT_FOUND naming it.
        cases.append((lambda s: s.begin_pass([unique("missing")]).send(0, *qkv()),
                      StatusCode.NOT_FOUND, "batch.sequence_ids[0]"))
        # A sequence that is not level (layer 0 ran ahead): FAILED_PRECONDITION.
        c.step_batch(0, [ahead], *qkv())
        cases.append((lambda s: s.begin_pass([ahead]).send(0, *qkv()),
                      StatusCode.FAILED_PRECONDITION, ahead))
        # The model's kv heads are checked at the begin step.
        cases.append((lambda s: s.begin_pass([seq]).send(
            0, m.tensor(1, 4), m.tensor(1, 4), m.tensor(1, 4)),
            StatusCode.INVALID_ARGUMENT, "batch.k.shape"))
        # A layer step naming a pass the stream never began (sent raw, past the local checks).
        raw = flashkv.kvcache_pb2.StepRequest(layer=1)
        raw.batch.pass_id = 99
        for name, x in zip("qkv", qkv()):
            flashkv.to_proto(x, out=getattr(raw.batch, name))
        cases.append((lambda s: s.send_request(raw), StatusCode.FAILED_PRECONDITION, "99"))
        for start, code, text in cases:
            session = c.open_step_session(routing_key="refusals")
            start(session)
            with pytest.raises(FlashkvError) as e:
                session.receive()
            assert e.value.code == code and text in e.value.message, e.value
            assert e.value.rpc == "StepStream"
            with pytest.raises(FlashkvError):
                session.finish()

        # Unary Step refuses a pass id: passes live on a StepStream.
        with pytest.raises(FlashkvError) as e:
            c.step_raw(raw, routing_key=seq)
        assert e.value.code == StatusCode.INVALID_ARGUMENT and e.value.rpc == "Step"
        for s in (seq, ahead):
            c.free_sequence(s)


def _wait_for_blocks(c, before, label, seconds=10.0):
    """The server undoes an ended stream's passes as it sees the end (a cancel is not waited
    for): the free and cached blocks must come back to `before`'s within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        now = c.cache_info()
        if (now.blocks_free, now.blocks_cached) == (before.blocks_free, before.blocks_cached):
            return
        assert time.monotonic() < deadline, (
            f"{label}: blocks free/cached {now.blocks_free}/{now.blocks_cached}, before the pass "
            f"{before.blocks_free}/{before.blocks_cached}")
        time.sleep(0.02)


def test_a_stream_ended_mid_pass_leaves_lengths_unchanged(server):
    """finish() after two of three layers, and cancel() after one: the passes abort, KV blocks
    come back, and the sequences continue as if the passes never began (the next step's output
    is attention over the committed context only, on every layer)."""
    with _client(server) as c:
        info = c.cache_info()
        m = Model(info, seed=23)
        ids = [unique("mid") for _ in range(2)]
        for s in ids:
            c.create_sequence(s)
        _prefill(c, m, ids, [info.page_size, info.page_size])  # full pages: a pass needs more
        before = c.cache_info()
        for end, layers_sent in (("finish", 2), ("cancel", 1)):
            session = c.open_step_session()
            p = session.begin_pass(ids, num_tokens=[1, 2])
            for layer in range(layers_sent):
                p.step(layer, *_batch(m, ids, [1, 2], layer)[1])  # computed, not committed
            assert c.cache_info().blocks_free < before.blocks_free  # the pass holds new pages
            if end == "finish":
                session.finish()
            else:
                session.cancel()
            _wait_for_blocks(c, before, end)
        _prefill(c, m, ids, [1, 1])  # checked against the committed context only
        for s in ids:
            c.free_sequence(s)
