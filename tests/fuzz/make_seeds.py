#!/usr/bin/python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/<target>/seed-*): a few valid inputs of
each kind, for the fuzzers to mutate from. Deterministic: running it again rewrites the same
bytes. Inputs the fuzzers found later (crashes turned regression tests, docs/reliability.md) live
beside the seeds under other names and are not touched.

  /usr/bin/python3 tests/fuzz/make_seeds.py   # Debian protoc and python3-protobuf (setup.sh)

Input formats (see each *_fuzz.cc):
  wire_decode        [kind] [cuts] [cut positions...] message
  attention_request  [flags: bit 0 varlen, bit 1 patch region ids] [cuts] [positions...] message
  step_request       [flags: bit 0 patch region ids] [cuts] [positions...] message
  kernel_args        decisions, one or two bytes each (byte_reader.h)
  kvcache_ops        decisions, one or two bytes each (the cache shape, then the operations)
"""

import os
import random
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

FP16, BF16, FP32 = 1, 2, 3


def load_protos(out_dir):
    protos = ["flashkv/v1/tensor.proto", "flashkv/v1/attention.proto",
              "flashkv/v1/kvcache.proto"]
    subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out", out_dir]
                   + protos, check=True)
    sys.path.insert(0, out_dir)
    from flashkv.v1 import attention_pb2, kvcache_pb2, tensor_pb2  # noqa: E402
    return attention_pb2, kvcache_pb2, tensor_pb2


def tensor(tensor_pb2, dtype, shape, rng, region=None):
    t = tensor_pb2.Tensor(dtype=dtype, shape=shape)
    if region is not None:
        t.region.region_id, t.region.offset = region
        return t
    count = 1
    for d in shape:
        count *= d
    if dtype == FP32:
        t.data = struct.pack("<%df" % count, *[rng.uniform(-1, 1) for _ in range(count)])
    else:  # small halves of either 16-bit format: 0x3c00 + a little, a finite value in both
        t.data = struct.pack("<%dH" % count, *[0x3c00 + rng.randrange(64) for _ in range(count)])
    return t


def write(target, name, data):
    directory = os.path.join(HERE, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


def sliced(message, cuts=()):
    """The cut count and positions a fuzz input starts with, then the message."""
    return bytes([len(cuts)] + list(cuts)) + message


def wire_seeds(attention_pb2, kvcache_pb2, tensor_pb2, rng):
    t = lambda *a, **k: tensor(tensor_pb2, *a, rng=rng, **k)
    step = kvcache_pb2.StepRequest(layer=1, step_id=7)
    for i, n in enumerate([2, 1]):
        e = step.entries.add(sequence_id="seq-%d" % i, token_ids=list(range(10, 10 + n)))
        e.q.CopyFrom(t(FP16, [n, 4, 32]))
        e.k.CopyFrom(t(FP16, [n, 2, 32]))
        e.v.CopyFrom(t(FP16, [n, 2, 32]))
    step.entries[1].out.region_id = 1
    response = kvcache_pb2.StepResponse(step_id=7)
    response.out.add().CopyFrom(t(FP16, [2, 4, 32]))
    fixed = attention_pb2.AttentionRequest(causal=True, softmax_scale=0.25, return_lse=True)
    fixed.q.CopyFrom(t(FP32, [1, 3, 2, 32]))
    fixed.k.CopyFrom(t(FP32, [1, 4, 1, 32]))
    fixed.v.CopyFrom(t(FP32, [1, 4, 1, 32]))
    varlen = attention_pb2.AttentionVarlenRequest(cu_seqlens_q=[0, 2, 3],
                                                  cu_seqlens_kv=[0, 3, 5])
    varlen.q.CopyFrom(t(BF16, [3, 2, 32]))
    varlen.k.CopyFrom(t(BF16, [5, 2, 32]))
    varlen.v.CopyFrom(t(BF16, [5, 2, 32]))
    attention_response = attention_pb2.AttentionResponse()
    attention_response.out.CopyFrom(t(FP32, [1, 3, 2, 32]))
    attention_response.lse.CopyFrom(t(FP32, [1, 2, 3]))
    for kind, (name, msg) in enumerate([("step_request", step), ("step_response", response),
                                        ("attention_request", fixed), ("varlen_request", varlen),
                                        ("attention_response", attention_response)]):
        data = msg.SerializeToString()
        write("wire_decode", name, bytes([kind]) + sliced(data))
        write("wire_decode", name + "-sliced", bytes([kind]) + sliced(data, (3, 77, 200)))
    return fixed, varlen


def attention_seeds(attention_pb2, tensor_pb2, fixed, varlen, rng):
    t = lambda *a, **k: tensor(tensor_pb2, *a, rng=rng, **k)
    write("attention_request", "fixed", bytes([0]) + sliced(fixed.SerializeToString()))
    write("attention_request", "fixed-sliced",
          bytes([0]) + sliced(fixed.SerializeToString(), (40, 90)))
    write("attention_request", "varlen", bytes([1]) + sliced(varlen.SerializeToString()))
    # Region ids 1 (mod 3) become the caller's region, 2 (mod 3) another tenant's (patch mode).
    regions = attention_pb2.AttentionRequest(return_lse=True)
    regions.q.CopyFrom(t(FP16, [1, 2, 2, 64], region=(1, 0)))
    regions.k.CopyFrom(t(FP16, [1, 3, 1, 64], region=(1, 512)))
    regions.v.CopyFrom(t(FP16, [1, 3, 1, 64]))
    regions.out.region_id, regions.out.offset = 1, 4096
    regions.lse.region_id, regions.lse.offset = 1, 8192
    write("attention_request", "regions", bytes([2]) + sliced(regions.SerializeToString()))
    other = attention_pb2.AttentionVarlenRequest(cu_seqlens_q=[0, 1], cu_seqlens_kv=[0, 2])
    other.q.CopyFrom(t(FP32, [1, 1, 32], region=(2, 0)))
    other.k.CopyFrom(t(FP32, [2, 1, 32]))
    other.v.CopyFrom(t(FP32, [2, 1, 32]))
    write("attention_request", "other-tenant", bytes([3]) + sliced(other.SerializeToString()))


def step_seeds(kvcache_pb2, tensor_pb2, rng):
    """StepRequests for the step_request target's server: model 4/2 heads, head dim 32, fp16;
    the caller's sequences a, b, c (another tenant holds a and d)."""
    t = lambda *a, **k: tensor(tensor_pb2, *a, rng=rng, **k)

    # q, k, v and out of a StepEntry or a StepBatch (the same fields): rows of 4 query and 2 K/V
    # heads of 32, q and out optionally in a region; tensors drawn from `make`.
    def fill_step_tensors(dst, rows, q_region, out_region, make):
        dst.q.CopyFrom(make(FP16, [rows, 4, 32], region=q_region))
        dst.k.CopyFrom(make(FP16, [rows, 2, 32]))
        dst.v.CopyFrom(make(FP16, [rows, 2, 32]))
        if out_region is not None:
            dst.out.region_id, dst.out.offset = out_region

    def request(layer, entries):
        step = kvcache_pb2.StepRequest(layer=layer, step_id=3)
        for seq, n, q_region, out_region in entries:
            e = step.entries.add(sequence_id=seq, token_ids=list(range(100, 100 + n)))
            fill_step_tensors(e, n, q_region, out_region, t)
        return step.SerializeToString()

    write("step_request", "two-entries", bytes([0]) + sliced(
        request(0, [("a", 3, None, None), ("b", 1, None, None)]), (50, 180)))
    # Region ids 1 (mod 3): the caller's region; 2 (mod 3): the other tenant's (patch mode).
    write("step_request", "regions", bytes([1]) + sliced(
        request(1, [("c", 2, (1, 0), (1, 4096)), ("a", 1, None, (1, 8192))])))
    write("step_request", "other-region", bytes([1]) + sliced(
        request(0, [("b", 1, (2, 0), None)])))
    write("step_request", "other-tenant-id", bytes([0]) + sliced(
        request(0, [("d", 1, None, None)])))

    # Batched steps (StepRequest.batch), from an rng of their own so that the seeds above and
    # after keep their bytes.
    brng = random.Random(20261126)
    bt = lambda *a, **k: tensor(tensor_pb2, *a, rng=brng, **k)

    def batch(layer, ids, num_tokens, q_region, out_region):
        step = kvcache_pb2.StepRequest(layer=layer, step_id=4)
        b = step.batch
        b.sequence_ids.extend(ids)
        b.num_tokens.extend(num_tokens)
        rows = sum(num_tokens) if num_tokens else len(ids)
        fill_step_tensors(b, rows, q_region, out_region, bt)
        return step.SerializeToString()

    write("step_request", "batch-decode", bytes([0]) + sliced(
        batch(0, ["a", "b", "c"], [], None, None), (40,)))
    write("step_request", "batch-regions", bytes([1]) + sliced(
        batch(1, ["c", "a"], [2, 3], (1, 0), (1, 8192))))

    # Decode-pass steps (StepBatch.pass_id): a layer step of the target's live 3-row pass, in
    # bytes and in regions, and one naming sequences (refused). An rng of their own again.
    prng = random.Random(20261128)
    pt = lambda *a, **k: tensor(tensor_pb2, *a, rng=prng, **k)

    def pass_step(layer, ids, rows, q_region, out_region):
        step = kvcache_pb2.StepRequest(layer=layer, step_id=5)
        step.batch.pass_id = 7
        step.batch.sequence_ids.extend(ids)
        fill_step_tensors(step.batch, rows, q_region, out_region, pt)
        return step.SerializeToString()

    write("step_request", "pass-layer", bytes([0]) + sliced(pass_step(1, [], 3, None, None), (30,)))
    write("step_request", "pass-layer-regions", bytes([1]) + sliced(
        pass_step(1, [], 3, (1, 0), (1, 4096))))
    write("step_request", "pass-named", bytes([0]) + sliced(pass_step(1, ["a"], 3, None, None)))


def wire_batch_seeds(kvcache_pb2, tensor_pb2):
    """A batched StepRequest and its StepResponse.batch_out (an rng of their own: the seeds
    written before keep their bytes)."""
    rng = random.Random(20261127)
    t = lambda *a, **k: tensor(tensor_pb2, *a, rng=rng, **k)
    step = kvcache_pb2.StepRequest(layer=2, step_id=9)
    step.batch.sequence_ids.extend(["seq-0", "seq-1", "seq-2"])
    step.batch.num_tokens.extend([2, 1, 1])
    step.batch.q.CopyFrom(t(FP16, [4, 4, 32], region=(1, 64)))
    step.batch.k.CopyFrom(t(FP16, [4, 2, 32]))
    step.batch.v.CopyFrom(t(FP16, [4, 2, 32]))
    step.batch.out.region_id, step.batch.out.offset = 1, 4096
    step.batch.token_ids.extend([5, 6, 7, 8])
    response = kvcache_pb2.StepResponse(step_id=9, kernel_ns=1000, server_ns=3000)
    response.batch_out.CopyFrom(t(FP16, [4, 4, 32], region=(1, 4096)))
    for kind, (name, msg) in enumerate([("step_batch_request", step),
                                        ("step_batch_response", response)]):
        data = msg.SerializeToString()
        write("wire_decode", name, bytes([kind]) + sliced(data, (5, 60)))


def decision_seeds(rng):
    for i in range(6):
        write("kernel_args", "random-%d" % i, bytes(rng.randrange(256) for _ in range(96)))
    for i in range(4):
        write("kvcache_ops", "random-%d" % i, bytes(rng.randrange(256) for _ in range(1200)))


def main():
    rng = random.Random(20240611)
    with tempfile.TemporaryDirectory() as tmp:
        attention_pb2, kvcache_pb2, tensor_pb2 = load_protos(tmp)
        fixed, varlen = wire_seeds(attention_pb2, kvcache_pb2, tensor_pb2, rng)
        attention_seeds(attention_pb2, tensor_pb2, fixed, varlen, rng)
        step_seeds(kvcache_pb2, tensor_pb2, rng)
        wire_batch_seeds(kvcache_pb2, tensor_pb2)
    decision_seeds(rng)


if __name__ == "__main__":
    main()
