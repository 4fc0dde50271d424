"""The shared-memory data plane from Python against the real server: stateless attention with
inputs read from and outputs written into a registered region equals the float64 reference, and
every misuse is refused with a clear error: out of bounds, another tenant's region, unsealed
memory, released regions."""

import os

import numpy as np
import pytest

import flashkv
from flashkv import FlashkvError, StatusCode, reference


def _rounded(rng, shape):
    return rng.uniform(-1, 1, shape).astype(np.float16)


@pytest.mark.parametrize("listen", ["tcp", "unix"])
def test_attention_through_a_region_equals_the_reference(start_server, tmp_path, listen):
    target = None
    if listen == "unix":
        server = start_server(listen=f"unix:{tmp_path}/flashkv.sock")
        target = f"unix:{tmp_path}/flashkv.sock"
    else:
        server = start_server()
        target = server.target
    rng = np.random.default_rng(21)
    q, k, v = _rounded(rng, (3, 2, 4, 64)), _rounded(rng, (3, 9, 2, 64)), \
        _rounded(rng, (3, 9, 2, 64))
    with flashkv.Client(target) as c, c.attach_region(1 << 20) as region:
        c.wait_for_serving(30)
        rq, rk, rv = region.put(q), region.put(k), region.put(v)
        out = region.empty(q.shape, "fp16")
        lse = region.empty((3, 4, 2), "fp32")
        out.array[...] = np.float16(np.nan)  # poisoned: every element must be written
        result = c.attention(rq, rk, rv, causal=True, return_lse=True, out=out, lse=lse)
        assert result.out is out.array and result.lse is lse.array
        want, want_lse = reference.attention_fixed(q, k, v, causal=True)
        assert reference.max_violation(out.array, want, "fp16")[1] == 0
        np.testing.assert_allclose(lse.array, want_lse, rtol=1e-5, atol=1e-5)
        # Inputs from the region, output in the response; and the reverse.
        assert reference.max_violation(c.attention(rq, rk, rv, causal=True).out, want,
                                       "fp16")[1] == 0
        out.array[...] = 0
        assert c.attention(q, k, v, causal=True, out=out).out is out.array
        assert reference.max_violation(out.array, want, "fp16")[1] == 0


def test_varlen_through_a_region(client):
    rng = np.random.default_rng(22)
    q, k, v = _rounded(rng, (7, 4, 64)), _rounded(rng, (10, 2, 64)), _rounded(rng, (10, 2, 64))
    with client.attach_region(1 << 20) as region:
        out = region.empty(q.shape, "fp16")
        client.attention_varlen(region.put(q), region.put(k), region.put(v), [0, 3, 7],
                                [0, 6, 10], causal=True, out=out)
        want, _ = reference.attention_varlen(q, k, v, [0, 3, 7], [0, 6, 10], causal=True)
        assert reference.max_violation(out.array, want, "fp16")[1] == 0


def test_bounds_and_misuse_are_refused(client):
    with client.attach_region(4096) as region:
        q = region.put(np.zeros((1, 1, 4, 64), np.float16))
        kv = region.put(np.zeros((1, 2, 2, 64), np.float16))
        past_end = flashkv.RegionTensor(region, 4096 - 64, (1, 1, 4, 64), "fp16", q.array)
        with pytest.raises(FlashkvError) as e:
            client.attention(q, kv, kv, out=past_end)
        assert e.value.code == StatusCode.INVALID_ARGUMENT
        assert "out: [4032, 4032 + 512) lies outside region" in e.value.message
        with pytest.raises(FlashkvError, match="lse .* return_lse is false"):
            client.attention(q, kv, kv, lse=q)
        request = flashkv.attention_pb2.AttentionRequest()
        q.fill_proto(request.q)
        request.q.data = b"\0" * q.nbytes  # bytes and a region at once
        kv.fill_proto(request.k)
        kv.fill_proto(request.v)
        with pytest.raises(FlashkvError, match=r"q.data \(512 bytes\) must be empty"):
            client.attention_raw(request)
        region_id = region.region_id
    # Released: the id is gone.
    request.q.data = b""
    with pytest.raises(FlashkvError) as e:
        client.attention_raw(request)
    assert e.value.code == StatusCode.NOT_FOUND and str(region_id) in e.value.message


def test_another_tenants_region_is_not_found(start_server, tmp_path):
    # Tenants come from the server's token file; another tenant naming a region gets NOT_FOUND,
    # the answer an unknown id gets, and a call without a token is refused.
    tokens = tmp_path / "tokens.txt"
    token_a, token_b = "tenant-a-0123456789abcdef", "tenant-b-0123456789abcdef"
    tokens.write_text(f"{token_a} a\n{token_b} b\n")
    server = start_server(tokens_file=str(tokens))
    with flashkv.Client(server.target, bearer_token=token_a) as c, \
            c.attach_region(4096) as region:
        c.wait_for_serving(30)
        q = region.put(np.ones((1, 1, 4, 64), np.float16))
        kv = region.put(np.ones((1, 2, 2, 64), np.float16))
        c.attention(q, kv, kv)
        with flashkv.Client(server.target, bearer_token=token_b) as other:
            with pytest.raises(FlashkvError) as e:
                other.attention(q, kv, kv)
            assert e.value.code == StatusCode.NOT_FOUND and "q.region.region_id" in e.value.message
        with flashkv.Client(server.target) as anonymous:
            with pytest.raises(FlashkvError) as e:
                anonymous.attention(q, kv, kv)
            assert e.value.code == StatusCode.UNAUTHENTICATED


def test_unsealed_or_foreign_memory_is_refused(client):
    stub = client._regions
    fd = os.memfd_create("unsealed")
    os.ftruncate(fd, 4096)
    try:
        request = flashkv.region_pb2.AttachRegionRequest(
            size=4096, host=flashkv.region_pb2.HostMemory(pid=os.getpid(), fd=fd))
        with pytest.raises(Exception) as e:
            next(stub.AttachRegion(request))
        assert e.value.code() == StatusCode.FAILED_PRECONDITION
        assert "sealed with F_SEAL_SHRINK" in e.value.details()
        request.host.fd = 987654
        with pytest.raises(Exception) as e:
            next(stub.AttachRegion(request))
        assert e.value.code() == StatusCode.NOT_FOUND
    finally:
        os.close(fd)


def test_region_released_when_the_client_goes(start_server):
    server = start_server()
    with flashkv.Client(server.target) as c:
        c.wait_for_serving(30)
        region = c.attach_region(4096)
        q = region.put(np.zeros((1, 1, 4, 64), np.float16))
        c.attention(q, q.array[:, :, :2], q.array[:, :, :2])
        region._call.cancel()  # as a dropped connection does
        import time
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                c.attention(q, q.array[:, :, :2], q.array[:, :, :2])
            except FlashkvError as e:
                assert e.code == StatusCode.NOT_FOUND
                break
            time.sleep(0.05)
        else:
            pytest.fail("region still usable after its stream was cancelled")
