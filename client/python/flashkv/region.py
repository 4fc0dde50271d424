"""The shared-memory data plane from Python: a memory region shared with a server on this host, so
that requests name slices of it instead of carrying bytes (proto/flashkv/v1/region.proto).

    with client.attach_region(64 << 20) as region:
        q = region.empty((B, 1, Hq, D), "fp16")      # numpy views into the shared memory
        q.array[...] = ...
        out = region.empty((B, 1, Hq, D), "fp16")
        result = client.attention(q, k, v, out=out)  # result.out is out.array, written in place

The memory is a memfd sealed against shrinking and growing (the server maps it, and a region
that could shrink under its mapping would crash it), opened by the server through
/proc/<pid>/fd/<fd>: client and server must share a host, a PID namespace and a user. The
region lives as long as its AttachRegion stream: release() (or leaving the `with` block, or the
process ending) releases it. Requests naming it must carry the same bearer token.

Slices are bump-allocated at 64-byte alignment (the kernels read in place when aligned);
reset() starts over. Outputs must not overlap a request's inputs.
"""

import fcntl
import mmap
import os
from dataclasses import dataclass
from typing import Tuple

import grpc
import numpy as np

from . import _proto
from .errors import FlashkvError, StatusCode, from_rpc_error
from .tensor import (_NUMPY_STORAGE, NUMPY, WireArray, dtype_name, fill_proto, itemsize, prepare,
                     proto_dtype)

ALIGNMENT = 64


@dataclass
class RegionTensor:
    """A tensor that lives in a SharedRegion: `array` is the numpy view of its bytes (bf16 as
    uint16 bits), `offset` its place in the region."""
    region: "SharedRegion"
    offset: int
    shape: Tuple[int, ...]
    dtype: str
    array: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def fill_proto(self, message) -> None:
        """Describes the tensor in a flashkv.v1.Tensor: dtype, shape and region, no bytes."""
        message.dtype = proto_dtype(self.dtype)
        message.shape[:] = self.shape
        self.fill_slice(message.region)

    def fill_slice(self, slice_message) -> None:
        slice_message.region_id = self.region.region_id
        slice_message.offset = self.offset


def fill_inputs(message, tensors, dtype=None, prefix: str = "") -> WireArray:
    """Fills the q, k, v fields of `message` from `tensors` ((name, x) pairs): a RegionTensor as
    its descriptor, anything else as bytes (converted to `dtype` when given; errors name
    prefix + name). Returns the first tensor's wire form (its dtype and array kind are the
    outputs')."""
    first = None
    for name, x in tensors:
        if isinstance(x, RegionTensor):
            x.fill_proto(getattr(message, name))
            wire = WireArray(x.array, x.dtype, NUMPY)
        else:
            wire = prepare(x, dtype, prefix + name)
            fill_proto(wire, getattr(message, name))
        first = first or wire
    return first


class SharedRegion:
    """Created by Client.attach_region(). Thread-safety: allocation is not locked; share a region
    between threads only with your own locking."""

    def __init__(self, stub, metadata, size: int, timeout: float):
        if size <= 0:
            raise FlashkvError(StatusCode.INVALID_ARGUMENT, f"region size ({size}) must be > 0")
        self._fd = os.memfd_create("flashkv-region", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self._fd, size)
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self._map = mmap.mmap(self._fd, size)
        except OSError:
            os.close(self._fd)
            raise
        self.size = size
        self.bytes = np.frombuffer(self._map, dtype=np.uint8)
        self._next = 0
        request = _proto.region_pb2.AttachRegionRequest(
            size=size, host=_proto.region_pb2.HostMemory(pid=os.getpid(), fd=self._fd))
        self._call = stub.AttachRegion(request, metadata=metadata)
        self._release_stub = stub
        self._metadata = metadata
        try:
            first = next(self._call)  # the stream then stays open for the region's life
        except grpc.RpcError as e:
            self._close_memory()
            raise from_rpc_error(e, "AttachRegion") from None
        except StopIteration:
            self._close_memory()
            raise FlashkvError(StatusCode.INTERNAL, "AttachRegion ended without a region id",
                               "AttachRegion") from None
        self.region_id = first.region_id
        self._released = False

    def allocate(self, nbytes: int) -> int:
        """The offset of `nbytes` fresh bytes (64-byte aligned); RESOURCE_EXHAUSTED when full."""
        offset = -(-self._next // ALIGNMENT) * ALIGNMENT
        if offset + nbytes > self.size:
            raise FlashkvError(StatusCode.RESOURCE_EXHAUSTED,
                               f"region of {self.size} bytes has {self.size - offset} left; "
                               f"{nbytes} asked")
        self._next = offset + nbytes
        return offset

    def reset(self) -> None:
        """Forgets every allocation (tensors made before must no longer be used)."""
        self._next = 0

    def empty(self, shape, dtype) -> RegionTensor:
        """An uninitialised tensor in the region."""
        name = dtype_name(dtype)
        shape = tuple(int(d) for d in shape)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        offset = self.allocate(count * itemsize(name))
        array = np.frombuffer(self._map, dtype=_NUMPY_STORAGE[name], count=count,
                              offset=offset).reshape(shape)
        return RegionTensor(self, offset, shape, name, array)

    def put(self, x, dtype=None) -> RegionTensor:
        """A copy of `x` (anything the client accepts as a tensor) in the region."""
        from .tensor import prepare
        wire = prepare(x, dtype)
        t = self.empty(wire.array.shape, wire.dtype_name)
        t.array[...] = wire.array
        return t

    def release(self) -> None:
        """Releases the region on the server (ReleaseRegion) and unmaps it here. Idempotent."""
        if self._released:
            return
        self._released = True
        try:
            self._release_stub.ReleaseRegion(
                _proto.region_pb2.ReleaseRegionRequest(region_id=self.region_id),
                metadata=self._metadata, timeout=30)
        except grpc.RpcError:
            pass  # the stream's end releases it anyway
        self._call.cancel()
        self._close_memory()

    def _close_memory(self):
        self.bytes = None
        try:
            self._map.close()
        except (BufferError, AttributeError):
            pass  # numpy views still reference it: the mapping goes with them
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
