"""What the client sends and how it treats broken answers, against the in-test fake server:
the x-flashkv-sequence routing header on every sequence call, the bearer token, TLS and mutual
TLS, and StepSession's handling of stalls, failures and contract violations."""

import os
import threading

import numpy as np
import pytest

import flashkv
from conftest import TESTDATA
from fake_server import FakeServer
from flashkv import FlashkvError, StatusCode

HEADER = "x-flashkv-sequence"


@pytest.fixture()
def fake():
    server = FakeServer()
    yield server
    server.stop()


def _entry(seq, n=1):
    q = np.random.default_rng(len(seq)).standard_normal((n, 2, 32)).astype(np.float32)
    kv = np.zeros((n, 1, 32), np.float32)
    return flashkv.StepInput(seq, q, kv, kv)


def test_routing_header_on_every_sequence_call_and_token_on_every_call(fake):
    with flashkv.Client(fake.target, bearer_token="s3cret") as c:
        c.create_sequence("alpha", [1, 2, 3])
        c.fork_sequence("alpha", "beta")
        c.free_sequence("beta")
        c.create_sequence("gamma", routing_key="runner-7")
        c.step(0, [_entry("alpha"), _entry("gamma")])
        c.step(0, [_entry("gamma")], routing_key="runner-7")
        c.cache_info()
        with c.open_step_session() as s:
            s.step(0, [_entry("gamma"), _entry("alpha")])
        with c.open_step_session(routing_key="runner-7") as s:
            s.step(0, [_entry("alpha")])
    svc = fake.service
    assert [md[HEADER] for md in svc.metadata_of("CreateSequence")] == ["alpha", "runner-7"]
    assert [md[HEADER] for md in svc.metadata_of("ForkSequence")] == ["alpha"]  # the parent's
    assert [md[HEADER] for md in svc.metadata_of("FreeSequence")] == ["beta"]
    assert [md[HEADER] for md in svc.metadata_of("Step")] == ["alpha", "runner-7"]
    assert [md[HEADER] for md in svc.metadata_of("StepStream")] == ["gamma", "runner-7"]
    assert HEADER not in svc.metadata_of("GetCacheInfo")[0]
    assert all(md["authorization"] == "Bearer s3cret" for _, md in svc.calls)


def test_no_token_header_without_a_token(fake):
    with flashkv.Client(fake.target) as c:
        c.cache_info()
    assert "authorization" not in fake.service.calls[0][1]


def test_bad_routing_keys_fail_before_sending(fake):
    with flashkv.Client(fake.target) as c:
        with pytest.raises(FlashkvError) as e:
            c.create_sequence("bad\tid")
        assert e.value.code == StatusCode.INVALID_ARGUMENT and e.value.rpc is None
        with pytest.raises(FlashkvError, match="routing_key"):
            c.open_step_session(routing_key="x" * 300)
        with pytest.raises(FlashkvError, match="max_in_flight"):
            c.open_step_session(max_in_flight=0)
    assert fake.service.calls == []


def _pem(name):
    with open(os.path.join(TESTDATA, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mutual_tls(mutual):
    server = FakeServer(tls=(_pem("server.key"), _pem("server.pem"),
                             _pem("ca.pem") if mutual else None))
    try:
        tls = flashkv.TlsConfig(enabled=True, root_certs_file=os.path.join(TESTDATA, "ca.pem"),
                                server_name_override="localhost")
        if mutual:
            tls.client_cert_file = os.path.join(TESTDATA, "client.pem")
            tls.client_key_file = os.path.join(TESTDATA, "client.key")
        with flashkv.Client(server.target, tls=tls, bearer_token="t") as c:
            assert c.cache_info().backend == "fake"
        # Plaintext to a TLS server never gets an answer.
        with flashkv.Client(server.target, default_timeout=5) as c:
            with pytest.raises(FlashkvError) as e:
                c.cache_info()
            assert e.value.code == StatusCode.UNAVAILABLE and e.value.rpc == "GetCacheInfo"
        if mutual:  # without a client certificate the handshake fails
            tls.client_cert_file = tls.client_key_file = ""
            with flashkv.Client(server.target, tls=tls, default_timeout=5) as c:
                with pytest.raises(FlashkvError):
                    c.cache_info()
    finally:
        server.stop()


def test_tls_file_errors_name_the_field():
    with pytest.raises(FlashkvError, match="tls.root_certs_file '/nonexistent.pem'"):
        flashkv.Client("127.0.0.1:1", tls=flashkv.TlsConfig(enabled=True,
                                                           root_certs_file="/nonexistent.pem"))
    with pytest.raises(FlashkvError, match="set both or neither"):
        flashkv.Client("127.0.0.1:1", tls=flashkv.TlsConfig(
            enabled=True, client_cert_file=os.path.join(TESTDATA, "client.pem")))


def test_session_pipelines_and_answers_in_order(fake):
    with flashkv.Client(fake.target) as c, c.open_step_session(max_in_flight=3) as s:
        entries = [[_entry(f"s{i}", n=i + 1)] for i in range(3)]
        ids = [s.send(0, e) for e in entries]
        assert ids == [1, 2, 3] and s.in_flight == 3
        with pytest.raises(FlashkvError) as e:
            s.send(0, entries[0])
        assert e.value.code == StatusCode.FAILED_PRECONDITION
        for e in entries:
            (out,) = s.receive()
            np.testing.assert_array_equal(out, e[0].q)  # the fake answers out = q
        assert s.send(0, entries[0], step_id=77) == 77
        s.receive()
        with pytest.raises(FlashkvError, match="no request in flight"):
            s.receive()


def test_stream_failure_fails_the_waiting_request_and_every_later_one(fake):
    fake.service.stream_fail_at = (1, StatusCode.RESOURCE_EXHAUSTED, "KV memory: need 9 blocks")
    with flashkv.Client(fake.target) as c:
        s = c.open_step_session()
        for i in range(3):
            s.send(0, [_entry(f"s{i}")])
        s.receive()  # answered before the failure
        for _ in range(2):
            with pytest.raises(FlashkvError) as e:
                s.receive()
            assert e.value.code == StatusCode.RESOURCE_EXHAUSTED
            assert e.value.message == "KV memory: need 9 blocks"
        with pytest.raises(FlashkvError, match="RESOURCE_EXHAUSTED"):
            s.send(0, [_entry("s")])
        with pytest.raises(FlashkvError, match="RESOURCE_EXHAUSTED"):
            s.finish()


def test_response_timeout_cancels_a_stalled_stream(fake):
    fake.service.stream_stall.set()
    with flashkv.Client(fake.target) as c:
        s = c.open_step_session(response_timeout=0.3)
        s.send(0, [_entry("a")])
        s.send(0, [_entry("b")])
        for _ in range(2):
            with pytest.raises(FlashkvError) as e:
                s.receive()
            assert e.value.code == StatusCode.DEADLINE_EXCEEDED
            assert "no response within 0.3 s" in e.value.message
        s.cancel()
    fake.service.stream_stall.clear()


def test_answers_that_break_the_contract_are_internal(fake):
    with flashkv.Client(fake.target) as c:
        fake.service.wrong_step_id = True
        with pytest.raises(FlashkvError, match="expected step_id 5, got 6") as e:
            c.step(0, [_entry("a")], step_id=5)
        assert e.value.code == StatusCode.INTERNAL
        s = c.open_step_session()
        s.send(0, [_entry("a")])
        with pytest.raises(FlashkvError, match="out of order"):
            s.receive()
        s.cancel()
        fake.service.wrong_step_id = False
        fake.service.drop_output = True
        with pytest.raises(FlashkvError, match="1 outputs for 2 entries"):
            c.step(0, [_entry("a"), _entry("b")])


def test_cancel_and_send_from_one_thread_receive_from_another(fake):
    with flashkv.Client(fake.target) as c:
        s = c.open_step_session(max_in_flight=64)
        got, sent = [], threading.Semaphore(0)

        def receiver():  # receives what the sender says it sent
            for _ in range(50):
                sent.acquire()
                got.append(s.receive()[0].shape[0])

        t = threading.Thread(target=receiver)
        t.start()
        for i in range(50):
            while s.in_flight >= 64:
                pass
            s.send(0, [_entry(f"s{i}", n=1 + i % 3)])
            sent.release()
        t.join(30)
        assert got == [1 + i % 3 for i in range(50)]
        s.finish()
        s.finish()  # idempotent
        with pytest.raises(FlashkvError, match="already finished"):
            s.send(0, [_entry("x")])
        s2 = c.open_step_session()
        s2.send(0, [_entry("y")])
        s2.cancel()
        with pytest.raises(FlashkvError) as e:
            s2.receive()
        assert e.value.code == StatusCode.CANCELLED


def _batch(rows, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((rows, 2, 32)).astype(np.float32)
    kv = rng.standard_normal((rows, 1, 32)).astype(np.float32)
    return q, kv, kv


def test_decode_pass_wire_form_and_pipelining(fake):
    """Layer 0 names the sequences, later layers only the pass and the tensors; two passes
    interleave layer by layer on one stream and answer in request order."""
    with flashkv.Client(fake.target) as c, c.open_step_session() as s:
        a = s.begin_pass(["a0", "a1"], num_tokens=[2, 1], token_ids=[5, 6, 7], num_layers=3)
        b = s.begin_pass(["b0"], num_layers=3)
        assert (a.pass_id, b.pass_id, a.rows, b.rows) == (1, 2, 3, 1)
        for layer in range(3):
            qa, qb = _batch(3, layer)[0], _batch(1, 10 + layer)[0]
            a.send(layer, *_batch(3, layer))
            b.send(layer, *_batch(1, 10 + layer))
            np.testing.assert_array_equal(s.receive(), qa)  # the fake answers batch_out = q
            np.testing.assert_array_equal(s.receive(), qb)
        assert a.sent_all and b.next_layer == 3
        assert s.begin_pass(["a0"], num_layers=3).pass_id == 3
    sent = fake.service.stream_requests
    assert [(r.layer, r.batch.pass_id) for r in sent] == [(0, 1), (0, 2), (1, 1), (1, 2),
                                                           (2, 1), (2, 2)]
    assert list(sent[0].batch.sequence_ids) == ["a0", "a1"]
    assert list(sent[0].batch.num_tokens) == [2, 1]
    assert list(sent[0].batch.token_ids) == [5, 6, 7]
    assert list(sent[1].batch.sequence_ids) == ["b0"] and not sent[1].batch.num_tokens
    for r in sent[2:]:
        assert not (r.batch.sequence_ids or r.batch.num_tokens or r.batch.token_ids)
        assert list(r.batch.q.shape)[0] == (3 if r.batch.pass_id == 1 else 1)
    assert [r.step_id for r in sent] == [1, 2, 3, 4, 5, 6]


def test_decode_pass_misuse_is_refused_before_sending(fake):
    with flashkv.Client(fake.target) as c, c.open_step_session() as s:
        p = s.begin_pass(["x", "y"], num_layers=2)
        for layer in (1, 2, -1):
            with pytest.raises(FlashkvError, match=f"expects layer 0 next, not {layer}") as e:
                p.send(layer, *_batch(2, 0))
            assert e.value.code == StatusCode.FAILED_PRECONDITION and e.value.rpc is None
        with pytest.raises(FlashkvError, match=r"q.shape \[3,2,32\]: pass 1 has T = 2") as e:
            p.send(0, *_batch(3, 0))
        assert e.value.code == StatusCode.INVALID_ARGUMENT
        q, k, v = _batch(2, 0)
        with pytest.raises(FlashkvError, match=r"v.shape \[1,1,32\]"):
            p.send(0, q, k, v[:1])
        assert p.next_layer == 0 and fake.service.stream_requests == []
        p.step(0, q, k, v)
        with pytest.raises(FlashkvError, match="differ from layer 0's") as e:
            p.send(1, q, np.concatenate([k, k], axis=1), np.concatenate([v, v], axis=1))
        assert e.value.code == StatusCode.INVALID_ARGUMENT
        p.step(1, q, k, v)
        with pytest.raises(FlashkvError, match="all 2 layers were sent") as e:
            p.send(2, q, k, v)
        assert e.value.code == StatusCode.FAILED_PRECONDITION
        s.begin_pass(["x"], pass_id=7, num_layers=2).send(0, *_batch(1, 0))
        with pytest.raises(FlashkvError, match="pass_id 7 names a pass of this session"):
            s.begin_pass(["x"], pass_id=7, num_layers=2)
        for kwargs, message in [(dict(sequence_ids=[]), "sequence_ids is empty"),
                                (dict(sequence_ids=["x"], num_tokens=[1, 1]),
                                 "num_tokens has 2 values"),
                                (dict(sequence_ids=["x"], num_tokens=[0]), r"num_tokens\[0\] = 0"),
                                (dict(sequence_ids=["x"], pass_id=1 << 64), "pass_id"),
                                (dict(sequence_ids=["x"], num_layers=0), "num_layers")]:
            with pytest.raises(FlashkvError, match=message) as e:
                s.begin_pass(**kwargs)
            assert e.value.code == StatusCode.INVALID_ARGUMENT
        with pytest.raises(TypeError):
            s.begin_pass("x")
    assert len(fake.service.stream_requests) == 3  # layer 0, layer 1, pass 7's layer 0


def test_decode_pass_takes_the_layer_count_from_the_server_once(fake):
    with flashkv.Client(fake.target) as c, c.open_step_session() as s:
        for _ in range(2):  # the fake model has one layer: each pass is one step
            p = s.begin_pass(["a"])
            assert p.num_layers == 1
            p.step(0, *_batch(1, 0))
            assert p.sent_all
    assert len(fake.service.metadata_of("GetCacheInfo")) == 1


def test_decode_pass_after_a_stream_failure_raises_it(fake):
    fake.service.stream_fail_at = (0, StatusCode.NOT_FOUND, "batch.sequence_ids[0]: no 'a'")
    with flashkv.Client(fake.target) as c:
        s = c.open_step_session()
        p = s.begin_pass(["a"], num_layers=2)
        p.send(0, *_batch(1, 0))
        with pytest.raises(FlashkvError) as e:
            s.receive()
        assert e.value.code == StatusCode.NOT_FOUND and "no 'a'" in e.value.message
        for attempt in (lambda: p.send(1, *_batch(1, 0)), lambda: s.begin_pass(["a"])):
            with pytest.raises(FlashkvError, match="NOT_FOUND"):
                attempt()
        s.cancel()
