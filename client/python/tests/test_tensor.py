"""Tensors between numpy/torch and flashkv.v1.Tensor: dtypes, byte layout, bf16 rounding, the
checks on received tensors, and the float64 reference itself."""

import pickle
import struct

import numpy as np
import pytest

import flashkv
from flashkv import reference, tensor
from flashkv.errors import FlashkvError, StatusCode


def _bf16_rne(value: float) -> int:
    """bf16 bits of a float32 value, rounded to nearest even, computed one value at a time."""
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    if (bits & 0x7FFFFFFF) > 0x7F800000:
        return (bits >> 16) | 0x40
    upper, lower = bits >> 16, bits & 0xFFFF
    if lower > 0x8000 or (lower == 0x8000 and upper & 1):
        upper += 1
    return upper & 0xFFFF


def test_bf16_rounding_matches_scalar_round_to_nearest_even():
    rng = np.random.default_rng(1)
    values = np.concatenate([
        rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 2000),
        # ties both ways, overflow to inf, subnormals, signed zeros, infinities
        np.array([1 + 2**-8, 1 + 3 * 2**-8, 3.3895314e38, 1e-40, -0.0, 0.0, np.inf, -np.inf],
                 np.float32)])
    got = flashkv.float_to_bf16_bits(values)
    want = np.array([_bf16_rne(float(v)) for v in values], np.uint16)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint16


def test_bf16_nan_stays_nan_and_round_trip_is_exact():
    nan = flashkv.float_to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(flashkv.bf16_bits_to_float32(nan)).all()
    bits = np.arange(0, 1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(flashkv.bf16_bits_to_float32(bits))
    np.testing.assert_array_equal(
        flashkv.float_to_bf16_bits(flashkv.bf16_bits_to_float32(bits))[finite], bits[finite])


@pytest.mark.parametrize("dtype,np_dtype,pb", [("fp16", np.float16, 1), ("fp32", np.float32, 3)])
def test_numpy_round_trip_in_wire_layout(dtype, np_dtype, pb):
    x = np.random.default_rng(2).uniform(-4, 4, (3, 5, 2, 8)).astype(np_dtype)
    message = flashkv.to_proto(x)
    assert message.dtype == pb and list(message.shape) == [3, 5, 2, 8]
    assert message.data == x.astype(np.dtype(np_dtype).newbyteorder("<")).tobytes(order="C")
    back = flashkv.from_proto(message)
    assert back.dtype == np_dtype and back.shape == x.shape
    np.testing.assert_array_equal(back, x)


def test_bf16_from_bits_and_by_conversion():
    x = np.random.default_rng(3).uniform(-2, 2, (4, 3, 8)).astype(np.float32)
    bits = flashkv.float_to_bf16_bits(x)
    by_bits = flashkv.to_proto(bits)  # uint16 is bf16 bits
    by_conversion = flashkv.to_proto(x, dtype="bf16")
    assert by_bits.dtype == by_conversion.dtype == 2
    assert by_bits.data == by_conversion.data == bits.tobytes()
    # bits converted to another dtype go through their values
    assert flashkv.to_proto(bits, dtype="fp32").data == \
        flashkv.bf16_bits_to_float32(bits).tobytes()
    back = flashkv.from_proto(by_bits)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, bits)


def test_layout_is_c_order_little_endian_whatever_the_input():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    transposed = x.transpose(2, 0, 1)  # not contiguous
    big_endian = x.astype(">f4")
    assert flashkv.to_proto(transposed).data == np.ascontiguousarray(transposed).tobytes()
    assert flashkv.to_proto(big_endian).data == x.tobytes()
    assert flashkv.to_proto(np.float64(0.5) * x, dtype="fp16").data == (0.5 * x).astype(
        np.float16).tobytes()


def test_unsendable_inputs_are_invalid_argument_naming_the_field():
    with pytest.raises(FlashkvError) as e:
        tensor.prepare(np.zeros((2, 2), np.int32), field="entries[1].k")
    assert e.value.code == StatusCode.INVALID_ARGUMENT and "entries[1].k" in e.value.message
    assert "int32 is not fp16, bf16 or fp32; pass dtype= to convert" in e.value.message
    with pytest.raises(FlashkvError, match="float64 is not fp16, bf16 or fp32"):
        tensor.prepare(np.zeros(3), field="q")
    with pytest.raises(FlashkvError, match="cannot be sent as fp16"):
        tensor.prepare(np.array(["a"]), dtype="fp16", field="q")
    with pytest.raises(ValueError, match="must be one of fp16, bf16, fp32"):
        tensor.prepare(np.zeros(3, np.float32), dtype="int8")


def test_received_tensors_are_checked():
    good = flashkv.to_proto(np.ones((2, 3), np.float16))
    short = flashkv.tensor_pb2.Tensor()
    short.CopyFrom(good)
    short.data = good.data[:-1]
    with pytest.raises(FlashkvError) as e:
        flashkv.from_proto(short, "out[0]")
    assert e.value.code == StatusCode.INTERNAL
    assert "out[0].data has 11 bytes; shape [2,3] of fp16 needs 12" in e.value.message
    unknown = flashkv.tensor_pb2.Tensor(dtype=0, shape=[1], data=b"\0\0")
    with pytest.raises(FlashkvError, match="out.dtype"):
        flashkv.from_proto(unknown, "out")
    with pytest.raises(FlashkvError, match=r"shape \[2,3\] != the request's q shape \[3,2\]"):
        tensor.from_proto(good, "out", expect_shape=(3, 2))
    with pytest.raises(FlashkvError, match=r"dtype \(fp16\) != the request's q dtype \(fp32\)"):
        tensor.from_proto(good, "out", expect_dtype="fp32")


def test_zero_sized_tensors():
    x = np.zeros((0, 4, 8), np.float16)
    back = flashkv.from_proto(flashkv.to_proto(x))
    assert back.shape == (0, 4, 8) and back.dtype == np.float16


def test_numpy_outputs_are_read_only_views():
    back = flashkv.from_proto(flashkv.to_proto(np.ones(4, np.float32)))
    assert not back.flags.writeable
    back.copy()[0] = 2  # a copy is writable


def test_dtype_names():
    assert [tensor.dtype_name(x) for x in ("float16", "bfloat16", "FP32", 1, 2, 3)] == \
        ["fp16", "bf16", "fp32", "fp16", "bf16", "fp32"]
    with pytest.raises(ValueError):
        tensor.dtype_name(7)


def test_torch_tensors_when_torch_is_present():
    torch = pytest.importorskip("torch")  # optional: the client never requires torch
    for torch_dtype, name in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"),
                              (torch.float32, "fp32")):
        x = torch.randn(3, 2, 8).to(torch_dtype)
        wire = tensor.prepare(x.transpose(0, 1), field="q")  # non-contiguous too
        assert wire.dtype_name == name
        back = wire.like.wrap(wire.array, name)
        assert isinstance(back, torch.Tensor) and back.dtype == torch_dtype
        assert torch.equal(back, x.transpose(0, 1).contiguous())


def test_reference_matches_a_direct_softmax():
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((3, 4, 8)), rng.standard_normal((5, 2, 8)), \
        rng.standard_normal((5, 2, 8))
    out, lse = reference.attention(q, k, v, causal=True, softmax_scale=0.3)
    for h in range(4):
        for i in range(3):
            visible = i + 5 - 3 + 1  # bottom-right: query i sees keys 0 .. i + Skv - Sq
            s = 0.3 * k[:visible, h // 2] @ q[i, h]
            p = np.exp(s - s.max())
            np.testing.assert_allclose(out[i, h], (p / p.sum()) @ v[:visible, h // 2], 1e-12)
            np.testing.assert_allclose(lse[h, i], np.log(np.exp(s).sum()), 1e-12)
    # Rows that see no key: output 0, LSE -inf.
    out, lse = reference.attention(rng.standard_normal((4, 2, 8)), k[:2], v[:2], causal=True)
    assert (out[:2] == 0).all() and np.isneginf(lse[:, :2]).all()
    assert np.isfinite(lse[:, 2:]).all()


def test_errors_carry_code_message_and_rpc_and_pickle():
    e = FlashkvError(StatusCode.NOT_FOUND, "sequence 'x' not found", "Step")
    assert str(e) == "NOT_FOUND: sequence 'x' not found"
    copy = pickle.loads(pickle.dumps(e))
    assert (copy.code, copy.message, copy.rpc) == (e.code, e.message, e.rpc)


def test_routing_keys_are_checked_before_sending():
    flashkv.validate_routing_key("runner-3", "routing_key")
    with pytest.raises(FlashkvError, match="printable ASCII"):
        flashkv.validate_routing_key("a\nb", "routing_key")
    with pytest.raises(FlashkvError, match=r"routing_key \(257 bytes\) must be at most 256"):
        flashkv.validate_routing_key("x" * 257, "routing_key")
