"""Stateless Attention and AttentionVarlen through the Python client against the real server:
outputs and LSE equal the float64 reference in every dtype (numpy and torch inputs), and the
server's validation errors arrive as FlashkvError with code and message."""

import numpy as np
import pytest

import flashkv
from flashkv import FlashkvError, StatusCode, reference


def _rounded(rng, shape, dtype):
    """Fresh random values in (-1, 1), rounded to `dtype`: what is sent is exactly what the
    reference sees."""
    x = rng.uniform(-1, 1, shape)
    if dtype == "bf16":
        return flashkv.float_to_bf16_bits(x)
    return x.astype(np.float16 if dtype == "fp16" else np.float32)


def _check(got, want, dtype):
    err, bad = reference.max_violation(got, want, dtype)
    assert bad == 0, f"{bad} elements beyond tolerance (max error {err})"


def _check_lse(got, want):
    finite = np.isfinite(want)
    assert (np.isfinite(got) == finite).all()
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("causal,sq,skv,hq,hkv,d", [
    (True, 5, 9, 8, 2, 64),     # GQA, decode-like bottom-right alignment
    (True, 7, 3, 4, 4, 64),     # Sq > Skv: the first rows see no key
    (False, 1, 16, 6, 1, 128),  # MQA
])
def test_attention_equals_float64_reference(client, dtype, causal, sq, skv, hq, hkv, d):
    rng = np.random.default_rng([["fp16", "bf16", "fp32"].index(dtype), sq, skv, hq, hkv, d])
    q = _rounded(rng, (2, sq, hq, d), dtype)
    k, v = (_rounded(rng, (2, skv, hkv, d), dtype) for _ in range(2))
    result = client.attention(q, k, v, causal=causal, return_lse=True, dtype=dtype)
    want, want_lse = reference.attention_fixed(q, k, v, causal=causal)
    assert result.out.shape == q.shape and result.out.dtype == q.dtype
    assert result.lse.shape == (2, hq, sq) and result.lse.dtype == np.float32
    _check(result.out, want, dtype)
    _check_lse(result.lse, want_lse)


def test_softmax_scale_and_no_lse(client):
    rng = np.random.default_rng(5)
    q, k, v = (_rounded(rng, s, "fp32") for s in ((1, 4, 2, 64), (1, 6, 2, 64), (1, 6, 2, 64)))
    result = client.attention(q, k, v, softmax_scale=0.05)
    assert result.lse is None
    _check(result.out, reference.attention_fixed(q, k, v, softmax_scale=0.05)[0], "fp32")


def test_varlen_with_a_zero_length_sequence(client):
    rng = np.random.default_rng(6)
    cu_q, cu_kv = [0, 3, 3, 8], [0, 4, 6, 13]  # the second sequence has no queries
    q = _rounded(rng, (8, 4, 64), "fp16")
    k, v = (_rounded(rng, (13, 2, 64), "fp16") for _ in range(2))
    result = client.attention_varlen(q, k, v, cu_q, cu_kv, causal=True, return_lse=True)
    want, want_lse = reference.attention_varlen(q, k, v, cu_q, cu_kv, causal=True)
    assert result.out.shape == (8, 4, 64) and result.lse.shape == (4, 8)
    _check(result.out, want, "fp16")
    _check_lse(result.lse, want_lse)


def test_conversion_on_the_way(client):
    """float64 inputs with dtype= are rounded by the client; outputs come back in that dtype."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.uniform(-1, 1, s) for s in ((1, 3, 2, 64), (1, 5, 2, 64), (1, 5, 2, 64)))
    result = client.attention(q, k, v, causal=True, dtype="bf16")
    assert result.out.dtype == np.uint16  # bf16 bit patterns
    bits = [flashkv.float_to_bf16_bits(x) for x in (q, k, v)]
    _check(result.out, reference.attention_fixed(*bits, causal=True)[0], "bf16")


def test_torch_tensors_in_and_out(client):
    torch = pytest.importorskip("torch")
    for torch_dtype, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        q = torch.rand(1, 4, 4, 64).to(torch_dtype) * 2 - 1
        k, v = (torch.rand(1, 6, 2, 64).to(torch_dtype) * 2 - 1 for _ in range(2))
        result = client.attention(q, k, v, causal=True, return_lse=True)
        assert isinstance(result.out, torch.Tensor) and result.out.dtype == torch_dtype
        assert isinstance(result.lse, torch.Tensor) and result.lse.dtype == torch.float32
        _check(result.out, reference.attention_fixed(q, k, v, causal=True)[0], name)


def test_validation_errors_carry_code_and_message(client):
    q = np.zeros((2, 3, 4, 64), np.float16)
    k = np.zeros((3, 5, 2, 64), np.float16)
    with pytest.raises(FlashkvError) as e:
        client.attention(q, k, k)
    assert e.value.code == StatusCode.INVALID_ARGUMENT and e.value.rpc == "Attention"
    assert "k.shape[0] (B) = 3 must equal q.shape[0] (2)" in e.value.message
    # A byte count that does not match the shape, sent as a raw message.
    request = flashkv.attention_pb2.AttentionRequest()
    flashkv.to_proto(q, out=request.q)
    flashkv.to_proto(k[:2], out=request.k)
    flashkv.to_proto(k[:2], out=request.v)
    request.q.data = request.q.data[:-1]
    with pytest.raises(FlashkvError, match=r"q.data has 3071 bytes; shape \[2,3,4,64\] of fp16 "
                                           r"needs 3072") as e:
        client.attention_raw(request)
    assert e.value.code == StatusCode.INVALID_ARGUMENT
    with pytest.raises(FlashkvError, match=r"cu_seqlens_kv\[2\] \(7\) must be >= "
                                           r"cu_seqlens_kv\[1\] \(8\)"):
        client.attention_varlen(np.zeros((4, 2, 64), np.float16), np.zeros((9, 2, 64), np.float16),
                                np.zeros((9, 2, 64), np.float16), [0, 2, 4, 4], [0, 8, 7, 9])


def test_unreachable_server_is_unavailable_naming_the_rpc():
    with flashkv.Client("unix:/nonexistent/flashkv.sock", default_timeout=5) as c:
        with pytest.raises(FlashkvError) as e:
            c.attention(np.zeros((1, 1, 1, 64), np.float16), np.zeros((1, 1, 1, 64), np.float16),
                        np.zeros((1, 1, 1, 64), np.float16))
    assert e.value.code == StatusCode.UNAVAILABLE and e.value.rpc == "Attention"


def test_deadline_exceeded(client):
    q = np.zeros((8, 256, 8, 128), np.float16)
    with pytest.raises(FlashkvError) as e:
        client.attention(q, q, q, timeout=1e-4)
    assert e.value.code == StatusCode.DEADLINE_EXCEEDED


def test_health(client):
    assert client.check_health() == "SERVING"
    assert client.check_health("flashkv.v1.AttentionService") == "SERVING"
    assert client.check_health("no.such.Service") == "SERVICE_UNKNOWN"
