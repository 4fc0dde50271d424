"""Tensors between numpy / torch and flashkv.v1.Tensor (dtype, shape, C-order little-endian bytes).

Accepted inputs:
  numpy float16 -> fp16, float32 -> fp32, uint16 -> bf16 (bit patterns: numpy has no bf16); a
  numpy dtype named "bfloat16" (ml_dtypes, as used by JAX) -> bf16.
  torch.float16 / torch.bfloat16 / torch.float32 tensors on any device (copied to the host).
  `dtype=` converts: floats of any width -> "fp16", "bf16" (round to nearest even, as the
  server's flashkv::ToBFloat16) or "fp32".

Outputs come back in the form of the request's q ("like"): numpy float16/float32, bf16 as
uint16 bit patterns (or the ml_dtypes bfloat16 dtype when q had it), or torch tensors of q's
dtype on q's device. numpy outputs are read-only views of the received bytes (`.copy()` to write
into one); torch outputs own their memory.

torch is never imported here: a value is recognised as a torch tensor by its type's module, and
torch is then taken from sys.modules, where the caller's import put it.
"""

import sys
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from . import _proto
from .errors import FlashkvError, StatusCode

FP16, BF16, FP32 = "fp16", "bf16", "fp32"
DTYPES = (FP16, BF16, FP32)
_ALIASES = {"fp16": FP16, "float16": FP16, "half": FP16, "bf16": BF16, "bfloat16": BF16,
            "fp32": FP32, "float32": FP32, "float": FP32}
_ITEMSIZE = {FP16: 2, BF16: 2, FP32: 4}
_NUMPY_STORAGE = {FP16: np.dtype("<f2"), BF16: np.dtype("<u2"), FP32: np.dtype("<f4")}
# Every dimension must fit in int32 on the server (docs/api.md).
MAX_DIM = 2**31 - 1


def dtype_name(dtype) -> str:
    """"fp16", "bf16" or "fp32" from a name, a flashkv.v1.DType value or a numpy/torch dtype."""
    if isinstance(dtype, str):
        name = _ALIASES.get(dtype.lower().replace("torch.", ""))
        if name is None:
            raise ValueError(f"dtype '{dtype}' must be one of fp16, bf16, fp32")
        return name
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        pb = _proto.tensor_pb2
        table = {pb.DTYPE_FLOAT16: FP16, pb.DTYPE_BFLOAT16: BF16, pb.DTYPE_FLOAT32: FP32}
        if dtype not in table:
            raise ValueError(f"dtype {dtype} must be DTYPE_FLOAT16, DTYPE_BFLOAT16 or "
                             "DTYPE_FLOAT32")
        return table[dtype]
    return dtype_name(str(dtype))  # numpy and torch dtypes print as their names


def proto_dtype(dtype) -> int:
    pb = _proto.tensor_pb2
    return {FP16: pb.DTYPE_FLOAT16, BF16: pb.DTYPE_BFLOAT16, FP32: pb.DTYPE_FLOAT32}[
        dtype_name(dtype)]


def itemsize(dtype) -> int:
    return _ITEMSIZE[dtype_name(dtype)]


# ----- bf16 -------------------------------------------------------------------------------------

def float_to_bf16_bits(x) -> np.ndarray:
    """bf16 bit patterns (uint16) of `x`, rounded to nearest even; NaNs stay (quiet) NaNs."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = (bits >> np.uint32(16)) | np.uint32(0x40)
    return np.where(nan, quiet, rounded).astype(np.uint16)


def bf16_bits_to_float32(bits) -> np.ndarray:
    """float32 values of bf16 bit patterns (exact)."""
    b = np.asarray(bits)
    if b.dtype.itemsize != 2:
        raise ValueError(f"bf16 bit patterns must be 2-byte values, got {b.dtype}")
    return (b.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_float32(x, dtype=None) -> np.ndarray:
    """float32 values of an fp16/bf16/fp32 array or tensor (uint16 read as bf16 bits)."""
    wire = _to_wire_array(x, dtype)
    if wire.dtype_name == BF16:
        return bf16_bits_to_float32(wire.array)
    return wire.array.astype(np.float32)


# ----- inputs -----------------------------------------------------------------------------------

def is_torch_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _is_ml_bfloat16(dt: np.dtype) -> bool:
    return dt.name == "bfloat16" and dt.itemsize == 2


@dataclass(frozen=True)
class Like:
    """How outputs are returned for a request whose q looked like this."""
    kind: str  # "numpy", "ml_bf16" or "torch"
    np_dtype: Optional[np.dtype] = None  # the ml_dtypes bfloat16 dtype for "ml_bf16"
    torch_device: object = None

    def wrap(self, array: np.ndarray, dtype: str):
        if self.kind == "torch":
            torch = sys.modules["torch"]
            # np.array copies: the tensor owns writable memory. torch lacks uint16 before 2.3, so
            # bf16 bits travel as int16.
            if dtype == BF16:
                t = torch.from_numpy(np.array(array).view(np.int16)).view(torch.bfloat16)
            else:
                t = torch.from_numpy(np.array(array))
            return t if self.torch_device is None else t.to(self.torch_device)
        if self.kind == "ml_bf16" and dtype == BF16:
            return array.view(self.np_dtype)
        return array


NUMPY = Like("numpy")


@dataclass(frozen=True)
class WireArray:
    """A C-contiguous little-endian numpy array in the wire layout of `dtype_name`."""
    array: np.ndarray
    dtype_name: str
    like: Like


def _convert_float(array: np.ndarray, target: str, field: str) -> np.ndarray:
    if array.dtype.kind not in "fiu" and not _is_ml_bfloat16(array.dtype):
        raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                           f"{field}: {array.dtype} values cannot be sent as {target}")
    values = array.astype(np.float32) if _is_ml_bfloat16(array.dtype) else array
    if target == BF16:
        return float_to_bf16_bits(values)
    return np.ascontiguousarray(values, dtype=_NUMPY_STORAGE[target])


def _to_wire_array(x, dtype=None, field="tensor") -> WireArray:
    target = dtype_name(dtype) if dtype is not None else None
    like = NUMPY
    if is_torch_tensor(x):
        torch = sys.modules["torch"]
        t = x.detach()
        like = Like("torch", torch_device=t.device if t.device.type != "cpu" else None)
        t = t.cpu().contiguous()
        if t.dtype == torch.bfloat16:
            array, native = t.view(torch.int16).numpy().view(np.uint16), BF16
        elif t.dtype in (torch.float16, torch.float32):
            array, native = t.numpy(), dtype_name(str(t.dtype))
        else:
            array, native = t.to(torch.float32).numpy(), None
    else:
        array = np.asarray(x)
        if _is_ml_bfloat16(array.dtype):
            like = Like("ml_bf16", np_dtype=array.dtype)
            array, native = array.view(np.uint16), BF16
        elif array.dtype.kind == "f" and array.dtype.itemsize in (2, 4):  # either byte order
            native = FP16 if array.dtype.itemsize == 2 else FP32
        elif array.dtype.kind == "u" and array.dtype.itemsize == 2:
            native = BF16  # bit patterns: the only meaning uint16 has here
        else:
            native = None
    if target is None:
        if native is None:
            raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                               f"{field}: {array.dtype} is not fp16, bf16 or fp32; pass dtype= to "
                               "convert")
        target = native
    if native != target:
        if native == BF16:
            array = bf16_bits_to_float32(array)
        array = _convert_float(array, target, field)
    array = np.ascontiguousarray(array, dtype=_NUMPY_STORAGE[target])
    return WireArray(array, target, like)


def to_proto(x, dtype=None, field="tensor", out=None):
    """A flashkv.v1.Tensor holding `x` (numpy array, torch tensor or array-like); see the module
    doc for dtypes. `out`: a Tensor message to fill instead of a new one."""
    message = out if out is not None else _proto.tensor_pb2.Tensor()
    fill_proto(prepare(x, dtype, field), message)
    return message


def prepare(x, dtype=None, field="tensor") -> WireArray:
    """`x` in the wire layout (checked), with the form outputs derived from it should take."""
    wire = _to_wire_array(x, dtype, field)
    check_shape(wire.array.shape, field)
    return wire


def fill_proto(wire: WireArray, message) -> None:
    message.dtype = proto_dtype(wire.dtype_name)
    message.shape[:] = wire.array.shape
    message.data = wire.array.tobytes()


def check_shape(shape: Sequence[int], field: str) -> None:
    for i, d in enumerate(shape):
        if d > MAX_DIM:
            raise FlashkvError(StatusCode.INVALID_ARGUMENT,
                               f"{field}.shape[{i}] ({d}) must be at most {MAX_DIM}")


# ----- outputs ----------------------------------------------------------------------------------

def shape_string(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def from_proto(message, field="tensor", like: Like = NUMPY,
               expect_dtype: Optional[str] = None,
               expect_shape: Optional[Tuple[int, ...]] = None, data_in_region: bool = False):
    """The array (in the form `like`) a received flashkv.v1.Tensor holds. Anything malformed,
    or unlike the expected dtype/shape, is INTERNAL naming `field`: the server broke the
    contract. With data_in_region only dtype and shape are checked (None is returned): the
    bytes are in a shared-memory region."""
    try:
        dtype = dtype_name(message.dtype)
    except ValueError as e:
        raise FlashkvError(StatusCode.INTERNAL, f"{field}.dtype: {e}") from None
    shape = tuple(int(d) for d in message.shape)
    if any(d < 0 for d in shape):
        raise FlashkvError(StatusCode.INTERNAL, f"{field}.shape {shape_string(shape)} has a "
                                                "negative dimension")
    if expect_dtype is not None and dtype != expect_dtype:
        raise FlashkvError(StatusCode.INTERNAL,
                           f"{field}.dtype ({dtype}) != the request's q dtype ({expect_dtype})")
    if expect_shape is not None and shape != tuple(expect_shape):
        raise FlashkvError(StatusCode.INTERNAL,
                           f"{field}.shape {shape_string(shape)} != the request's q shape "
                           f"{shape_string(expect_shape)}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if data_in_region:
        if message.data:
            raise FlashkvError(StatusCode.INTERNAL, f"{field} has both bytes and a region")
        return None
    data = message.data
    if len(data) != count * _ITEMSIZE[dtype]:
        raise FlashkvError(StatusCode.INTERNAL,
                           f"{field}.data has {len(data)} bytes; shape {shape_string(shape)} of "
                           f"{dtype} needs {count * _ITEMSIZE[dtype]}")
    array = np.frombuffer(data, dtype=_NUMPY_STORAGE[dtype], count=count).reshape(shape)
    return like.wrap(array, dtype)
