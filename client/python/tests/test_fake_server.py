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
