"""KvCacheService through the Python client against the real server: sequences, Step and
StepStream in every dtype against float64 attention over everything sent, forks and prefix hits,
stats, and every error the service answers."""

import numpy as np
import pytest

import flashkv
from conftest import unique
from flashkv import FlashkvError, StatusCode, reference

DTYPES = ["fp16", "bf16", "fp32"]


@pytest.fixture(scope="module", params=DTYPES)
def dtype_server(request, start_server):
    return request.param, start_server(dtype=request.param, layers=3)


def _client(server):
    c = flashkv.Client(server.target, default_timeout=30)
    c.wait_for_serving(30)
    return c


class Model:
    """The K/V the server's cache holds per (sequence, layer), as float64; fresh random q/k/v in
    the server's dtype; each output checked against dense attention over the whole context."""

    def __init__(self, info, seed):
        self.info = info
        self.dtype = flashkv.tensor.dtype_name(info.dtype)
        self.rng = np.random.default_rng(seed)
        self.kv = {}

    def tensor(self, n, heads):
        x = self.rng.uniform(-1, 1, (n, heads, self.info.head_dim))
        if self.dtype == "bf16":
            return flashkv.float_to_bf16_bits(x)
        return x.astype(np.float16 if self.dtype == "fp16" else np.float32)

    def entry(self, seq, layer, n, token_ids=None):
        q = self.tensor(n, self.info.num_q_heads)
        k, v = self.tensor(n, self.info.num_kv_heads), self.tensor(n, self.info.num_kv_heads)
        return flashkv.StepInput(seq, q, k, v, token_ids)

    def commit(self, layer, entries):
        for e in entries:
            k, v = reference.to_float64(e.k), reference.to_float64(e.v)
            old = self.kv.get((e.sequence_id, layer))
            self.kv[(e.sequence_id, layer)] = (k, v) if old is None else (
                np.concatenate([old[0], k]), np.concatenate([old[1], v]))

    def check(self, layer, entries, outputs):
        assert len(outputs) == len(entries)
        for e, out in zip(entries, outputs):
            k, v = self.kv[(e.sequence_id, layer)]
            want, _ = reference.attention(e.q, k, v, causal=True)
            assert out.shape == e.q.shape and out.dtype == e.q.dtype
            err, bad = reference.max_violation(out, want, self.dtype)
            assert bad == 0, f"{e.sequence_id} layer {layer}: max error {err}"

    def step(self, client, layer, entries):
        outputs = client.step(layer, entries)
        self.commit(layer, entries)
        self.check(layer, entries, outputs)
        return outputs


def test_cache_info_describes_the_model(dtype_server):
    dtype, server = dtype_server
    with _client(server) as c:
        info = c.cache_info()
    assert (info.num_layers, info.num_q_heads, info.num_kv_heads, info.head_dim,
            info.page_size) == (3, 4, 2, 64, 4)
    assert flashkv.tensor.dtype_name(info.dtype) == dtype and info.backend == "cpu"
    assert info.blocks_total > 0 and info.max_context > 0


def test_prefill_then_decode_equals_dense_attention(dtype_server):
    """Entries mixing prefill chunks and decodes in one Step, over three layers."""
    _, server = dtype_server
    with _client(server) as c:
        m = Model(c.cache_info(), seed=11)
        a, b = unique("a"), unique("b")
        c.create_sequence(a)
        c.create_sequence(b)
        passes = [{a: 7, b: 1}, {a: 1, b: 9}, {a: 1, b: 1}, {a: 5, b: 1}, {a: 1, b: 1}]
        for lengths in passes:
            for layer in range(3):
                m.step(c, layer, [m.entry(s, layer, n) for s, n in lengths.items()])
        c.free_sequence(a)
        c.free_sequence(b)


def test_batched_steps_equal_dense_attention(dtype_server):
    """StepRequest.batch: the whole batch as one q/k/v, in bytes and in a region (output written
    there, poisoned first), by Client.step_batch and by a StepSession; prefill then decodes."""
    dtype, server = dtype_server
    with _client(server) as c, c.attach_region(1 << 20) as region:
        m = Model(c.cache_info(), seed=17)
        ids = [unique("batch") for _ in range(3)]
        for s in ids:
            c.create_sequence(s)
        session = c.open_step_session()
        passes = [[4, 1, 2], [1, 1, 1], [1, 1, 1], [3, 1, 1]]
        for p, counts in enumerate(passes):
            for layer in range(3):
                entries = [m.entry(s, layer, n) for s, n in zip(ids, counts)]
                q, k, v = (np.concatenate([getattr(e, t) for e in entries]) for t in "qkv")
                num_tokens = None if counts == [1, 1, 1] else counts
                way = (p + layer) % 3
                if way == 0:  # bytes, unary
                    out = c.step_batch(layer, ids, q, k, v, num_tokens=num_tokens)
                else:  # a region (unary, or on the stream)
                    region.reset()
                    rq, rk, rv = region.put(q), region.put(k), region.put(v)
                    slot = region.empty(q.shape, dtype)
                    slot.array[...] = 0xFFFF if dtype == "bf16" else np.nan  # poisoned
                    if way == 1:
                        out = c.step_batch(layer, ids, rq, rk, rv, num_tokens=num_tokens, out=slot)
                    else:
                        session.send_batch(layer, ids, rq, rk, rv, num_tokens=num_tokens,
                                           out=slot)
                        out = session.receive()
                    assert out is slot.array
                m.commit(layer, entries)
                rows = np.cumsum([0] + counts)
                m.check(layer, entries, [out[rows[i]:rows[i + 1]] for i in range(len(ids))])
        session.finish()
        with pytest.raises(FlashkvError) as e:
            c.step_batch(0, [ids[0], ids[0]], *(np.concatenate([x, x]) for x in (
                m.tensor(1, 4), m.tensor(1, 2), m.tensor(1, 2))))
        assert e.value.code == StatusCode.INVALID_ARGUMENT and "repeats" in str(e.value)
        for s in ids:
            c.free_sequence(s)


def test_float_inputs_converted_to_the_model_dtype(dtype_server):
    dtype, server = dtype_server
    with _client(server) as c:
        seq = unique()
        c.create_sequence(seq)
        rng = np.random.default_rng(12)
        q = rng.uniform(-1, 1, (3, 4, 64))
        k, v = rng.uniform(-1, 1, (3, 2, 64)), rng.uniform(-1, 1, (3, 2, 64))
        (out,) = c.step(0, [(seq, q, k, v)], dtype=dtype)
        wire = [flashkv.tensor.prepare(x, dtype).array for x in (q, k, v)]
        want, _ = reference.attention(*wire, causal=True)
        assert reference.max_violation(out, want, dtype)[1] == 0
        c.free_sequence(seq)


def test_fork_and_prefix_hit_equal_plain_sequences(fp16_server):
    with _client(fp16_server) as c:
        info = c.cache_info()
        m = Model(info, seed=13)
        parent, child = unique("parent"), unique("child")
        prompt = list(range(1000, 1000 + 3 * info.page_size + 2))
        c.create_sequence(parent, prompt)
        for layer in range(info.num_layers):
            m.step(c, layer, [m.entry(parent, layer, len(prompt), prompt)])
        c.fork_sequence(parent, child)
        for layer in range(info.num_layers):
            m.kv[(child, layer)] = m.kv[(parent, layer)]
        for _ in range(2):  # both decode on their own; the shared page is copied on write
            for layer in range(info.num_layers):
                m.step(c, layer, [m.entry(parent, layer, 1), m.entry(child, layer, 1)])

        # A new sequence with the same prompt prefix finds its leading full pages cached.
        hit = unique("hit")
        cached = c.create_sequence(hit, prompt[:2 * info.page_size] + [7, 8, 9])
        assert cached == 2 * info.page_size
        for layer in range(info.num_layers):
            k, v = m.kv[(parent, layer)]
            m.kv[(hit, layer)] = (k[:cached], v[:cached])
            m.step(c, layer, [m.entry(hit, layer, 3, [7, 8, 9])])
        for s in (parent, child, hit):
            c.free_sequence(s)


def test_step_stream_pipelines_two_micro_batches(fp16_server):
    with _client(fp16_server) as c:
        info = c.cache_info()
        m = Model(info, seed=14)
        seqs = [unique(f"s{i}") for i in range(4)]
        for s in seqs:
            c.create_sequence(s, routing_key="runner-py")
        batches = [seqs[:2], seqs[2:]]
        with c.open_step_session(routing_key="runner-py", max_in_flight=4) as session:
            for pass_index in range(3):
                n = 6 if pass_index == 0 else 1
                for layer in range(info.num_layers):
                    sent = []
                    for batch in batches:
                        entries = [m.entry(s, layer, n) for s in batch]
                        session.send(layer, entries)
                        sent.append(entries)
                    for entries in sent:
                        m.commit(layer, entries)
                        m.check(layer, entries, session.receive())
        stats = c.stats()
        assert stats.steps >= 3 * info.num_layers * 2 and stats.batches > 0
        for s in seqs:
            c.free_sequence(s, routing_key="runner-py")


def test_stream_failure_applies_nothing_after_it(fp16_server):
    with _client(fp16_server) as c:
        info = c.cache_info()
        m = Model(info, seed=15)
        seq = unique()
        c.create_sequence(seq)
        session = c.open_step_session()
        first = m.entry(seq, 0, 2)
        session.send(0, [first])
        session.send(0, [m.entry(unique("missing"), 0, 1)])
        session.send(0, [m.entry(seq, 0, 1)])
        m.commit(0, [first])
        m.check(0, [first], session.receive())
        for _ in range(2):
            with pytest.raises(FlashkvError) as e:
                session.receive()
            assert e.value.code == StatusCode.NOT_FOUND
        with pytest.raises(FlashkvError):
            session.finish()
        # The third request was never applied: the sequence holds the first step only.
        m.step(c, 0, [m.entry(seq, 0, 1)])
        c.free_sequence(seq)


def test_sequence_errors(client):
    seq = unique()
    with pytest.raises(FlashkvError) as e:
        client.free_sequence(seq)
    assert e.value.code == StatusCode.NOT_FOUND and e.value.rpc == "FreeSequence"
    client.create_sequence(seq)
    with pytest.raises(FlashkvError) as e:
        client.create_sequence(seq)
    assert e.value.code == StatusCode.ALREADY_EXISTS
    with pytest.raises(FlashkvError) as e:
        client.fork_sequence(unique("nobody"), unique("child"))
    assert e.value.code == StatusCode.NOT_FOUND
    with pytest.raises(FlashkvError) as e:
        client.fork_sequence(seq, seq)
    assert e.value.code == StatusCode.ALREADY_EXISTS
    client.free_sequence(seq)


def test_step_errors_change_nothing(client):
    info = client.cache_info()
    m = Model(info, seed=16)
    seq = unique()
    client.create_sequence(seq)
    with pytest.raises(FlashkvError) as e:  # layer 1 cannot run ahead of layer 0
        client.step(1, [m.entry(seq, 1, 1)])
    assert e.value.code == StatusCode.FAILED_PRECONDITION
    bad = m.entry(seq, 0, 2)
    bad.k = np.zeros((2, 4, 64), np.float16)  # the model has 2 kv heads
    with pytest.raises(FlashkvError, match=r"entries\[0\]\.k") as e:
        client.step(0, [bad])
    assert e.value.code == StatusCode.INVALID_ARGUMENT
    with pytest.raises(FlashkvError) as e:  # one unknown entry: the whole step fails
        client.step(0, [m.entry(seq, 0, 2), m.entry(unique("missing"), 0, 1)])
    assert e.value.code == StatusCode.NOT_FOUND
    with pytest.raises(FlashkvError) as e:
        client.step(info.num_layers, [m.entry(seq, 0, 1)])
    assert e.value.code == StatusCode.INVALID_ARGUMENT and "layer" in e.value.message
    m.step(client, 0, [m.entry(seq, 0, 3)])  # nothing of the failed steps was applied
    client.free_sequence(seq)


def test_resource_exhausted_leaves_everything_intact(start_server):
    server = start_server(kv_cache_bytes="64KiB", layers=1)
    with _client(server) as c:
        info = c.cache_info()
        m = Model(info, seed=17)
        seq, big = unique(), unique("big")
        c.create_sequence(seq)
        c.create_sequence(big)
        m.step(c, 0, [m.entry(seq, 0, 4)])
        before = c.stats()
        # More tokens than the free blocks hold, but within max_context: only memory is short.
        want = before.blocks_free * info.page_size + 1
        assert want <= info.max_context
        with pytest.raises(FlashkvError) as e:
            c.step(0, [m.entry(seq, 0, 1), m.entry(big, 0, want)])
        assert e.value.code == StatusCode.RESOURCE_EXHAUSTED and e.value.rpc == "Step"
        after = c.stats()
        assert (after.blocks_free, after.blocks_used) == (before.blocks_free, before.blocks_used)
        m.step(c, 0, [m.entry(seq, 0, 1), m.entry(big, 0, 3)])
        c.free_sequence(seq)
        c.free_sequence(big)
