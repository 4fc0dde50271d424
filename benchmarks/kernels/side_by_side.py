#!/usr/bin/env python3
"""flashkv's CUDA kernels (through libflashkv_capi.so and ctypes) against PyTorch SDPA, in one
process, on one GPU, on the same inputs.

Tables (markdown, to stdout and to --out):
  1. fixed-length attention, the grid of shared/ANCHORS.md: B=2, H=32 (16 at head dim 256),
     S=512..16384, D=64/128/256, fp16/bf16, causal or not; vs SDPA FLASH_ATTENTION and
     CUDNN_ATTENTION. TFLOPS count 4*B*H*S^2*D, halved for causal.
  2. paged decode: batch x context, Hq=32, Hkv=8, D=128, page 16, fp16; KV-read GB/s against the
     device-to-device copy bandwidth measured in this run, and vs SDPA cuDNN on contiguous K/V.
  3. a mixed batch (8 prefill chunks of 512 + 248 decodes over 2k-8k contexts) in one flashkv
     call vs the same work as gather-to-contiguous + SDPA per sequence.

Timing: CUDA events around one call, median of --reps (>= 30) after warm-up. Before each timed
call the GPU is kept busy (torch.cuda._sleep) so that host work (argument validation, Python)
overlaps it and the events measure GPU time alone, for every contestant alike. Inputs rotate
among enough copies that the working set exceeds the L2 cache. In the fixed-length table the
contestants of a row (every flashkv sm90 variant of --sm90-variants, SDPA FLASH, SDPA cuDNN) are
timed in turns, one call each per repetition, starting with a different one each time, so clock
and temperature drift over the row lands on all of them alike.

  python3 benchmarks/kernels/side_by_side.py --lib build/kernels/cuda/libflashkv_capi.so --out out.md
"""

import argparse
import ctypes
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"fp16": (torch.float16, 1), "bf16": (torch.bfloat16, 2)}
# flashkv_cuda_testing_set_sm90_variant's numbers (kernels/cuda/sm90/tile_shape.h, Sm90Variant).
SM90_VARIANTS = {0: "baseline", 1: "dynamic_schedule", 2: "auto", 3: "lazy_rescale",
                 4: "three_consumers", 5: "keys160", 6: "keys176",
                 7: "stream_k", 8: "paged_keys80",
                 9: "paged_k3", 10: "paged_keys80_lanes", 11: "paged_keys64"}
L2_BYTES = 50 * 2**20


class Flashkv:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        i, i64, p, f = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
        self.lib.flashkv_cuda_attention.argtypes = [i] * 7 + [p, p, p, p, p, p, p, p, p, i, f, p, p, ctypes.c_size_t]
        self.lib.flashkv_cuda_attention_paged.argtypes = (
            [i, i, i, i, i, i64, i, i, p, p, p, p, p, p, p, p, i, i, p, i, p, p, p, p, p, i, f, p, p, ctypes.c_size_t])
        self.err = ctypes.create_string_buffer(1024)

    @staticmethod
    def strides(t, batch, row, head):
        return (ctypes.c_int64 * 3)(batch, row, head)

    def set_sm90_variant(self, variant):
        self.check(self.lib.flashkv_cuda_testing_set_sm90_variant(variant))

    def check(self, code):
        if code != 0:
            raise RuntimeError(f"flashkv error {code}: {self.err.value.decode()}")

    def attention_bhsd(self, q, k, v, out, causal, dtype_code):
        """q/out [B,Hq,S,D], k/v [B,Hkv,Skv,D], contiguous (flashkv takes them by strides)."""
        b, hq, s, d = q.shape
        hkv, skv = k.shape[1], k.shape[2]
        qs = self.strides(q, hq * s * d, d, s * d)
        ks = self.strides(k, hkv * skv * d, d, skv * d)
        os_ = self.strides(out, hq * s * d, d, s * d)
        stream = torch.cuda.current_stream().cuda_stream
        self.check(self.lib.flashkv_cuda_attention(
            dtype_code, b, s, skv, hq, hkv, d, q.data_ptr(), qs, k.data_ptr(), ks, v.data_ptr(), ks,
            out.data_ptr(), os_, None, int(causal), float("nan"), stream, self.err, 1024))

    def paged(self, q, out, k_pool, v_pool, table, cu_q, cu_kv, host, max_q, max_kv, causal, dtype_code):
        """q/out [Tq,Hq,D]; pools [blocks,Hkv,page,D]; table [B, max_blocks] int32."""
        tq, hq, d = q.shape
        nblocks, hkv, page, _ = k_pool.shape
        qs = self.strides(q, 0, hq * d, d)
        cs = self.strides(k_pool, hkv * page * d, d, page * d)
        stream = torch.cuda.current_stream().cuda_stream
        self.check(self.lib.flashkv_cuda_attention_paged(
            dtype_code, table.shape[0], hq, hkv, d, tq, max_q, max_kv, q.data_ptr(), qs,
            out.data_ptr(), qs, None, k_pool.data_ptr(), v_pool.data_ptr(), cs, nblocks, page,
            table.data_ptr(), table.shape[1], cu_q.data_ptr(), cu_kv.data_ptr(),
            host["table"].data_ptr(), host["cu_q"].data_ptr(), host["cu_kv"].data_ptr(),
            int(causal), float("nan"), stream, self.err, 1024))


def time_gpu(fn, sets, reps, warmup=3, busy_cycles=2_000_000):
    """Median GPU milliseconds of fn(inputs), rotating `sets`."""
    for i in range(warmup):
        fn(sets[i % len(sets)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(busy_cycles)
        start.record()
        fn(sets[i % len(sets)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_gpu_in_turns(fns, sets, reps, warmup=3, busy_cycles=2_000_000):
    """Median GPU milliseconds of each fn(inputs), the fns called in turns (rotating the first)."""
    for i in range(warmup):
        for fn in fns:
            fn(sets[i % len(sets)])
    torch.cuda.synchronize()
    times = [[] for _ in fns]
    for i in range(reps):
        for j in range(len(fns)):
            k = (i + j) % len(fns)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(busy_cycles)
            start.record()
            fns[k](sets[i % len(sets)])
            end.record()
            end.synchronize()
            times[k].append(start.elapsed_time(end))
    return [statistics.median(t) for t in times]


def copy_bandwidth():
    n = 2**30  # 2 GiB of fp16 per side
    src = torch.randn(n, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)
    ms = time_gpu(lambda _: dst.copy_(src), [None], 20)
    del src, dst
    return 2 * 2 * n / (ms * 1e-3) / 1e9  # GB/s, bytes read + written


def sdpa(backend, q, k, v, causal, gqa=False):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


def emit(lines, out):
    text = "\n".join(lines)
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n\n")


def sdpa_works(backend, q, k, v, causal):
    try:
        sdpa(backend, q, k, v, causal)
        return True
    except RuntimeError as e:
        print(f"# {backend} failed: {e}", file=sys.stderr)
        return False


def fixed_grid(fk, args):
    variants = args.sm90_variants or [None]
    vcol = "variant | " if args.sm90_variants else ""
    lines = ["## Fixed-length attention vs SDPA (TFLOPS; ratio = SDPA time / flashkv time)", "",
             f"| dtype | causal | D | S | {vcol}flashkv ms | TF | SDPA flash ms | TF | x flash | SDPA cuDNN ms | TF | x cuDNN | max abs diff |",
             "|---|---|---|---|" + ("---|" if vcol else "") + "---|---|---|---|---|---|---|---|---|"]
    emit(lines, args.out)
    for dname in args.dtypes:
        dtype, code = DTYPES[dname]
        for d in args.head_dims:
            h = 16 if d == 256 else 32
            for s in args.seqlens:
                for causal in (False, True):
                    b = 2
                    nbytes = 4 * b * h * s * d * 2
                    nsets = max(1, math.ceil(4 * L2_BYTES / nbytes))
                    sets = [tuple(torch.randn(b, h, s, d, device="cuda", dtype=dtype) for _ in range(3))
                            + (torch.empty(b, h, s, d, device="cuda", dtype=dtype),) for _ in range(nsets)]
                    flops = 4 * b * h * s * s * d / (2 if causal else 1)
                    q, k, v, o = sets[0]
                    ref = sdpa(SDPBackend.FLASH_ATTENTION, q, k, v, causal)
                    diffs = []
                    fns = []
                    for variant in variants:
                        if variant is not None:
                            fk.set_sm90_variant(variant)
                        o.fill_(float("nan"))
                        fk.attention_bhsd(q, k, v, o, causal, code)
                        diffs.append((o.float() - ref.float()).abs().max().item())

                        def run(x, variant=variant):
                            if variant is not None:
                                fk.set_sm90_variant(variant)
                            fk.attention_bhsd(x[0], x[1], x[2], x[3], causal, code)
                        fns.append(run)
                    backends = [bk for bk in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION)
                                if sdpa_works(bk, q, k, v, causal)]
                    for bk in backends:
                        fns.append(lambda x, bk=bk: sdpa(bk, x[0], x[1], x[2], causal))
                    times = time_gpu_in_turns(fns, sets, args.reps)
                    peers = {bk: t for bk, t in zip(backends, times[len(variants):])}
                    for variant, t_fk, diff in zip(variants, times, diffs):
                        row = [dname, "yes" if causal else "no", str(d), str(s)]
                        if variant is not None:
                            row.append(SM90_VARIANTS[variant])
                        row += [f"{t_fk:.3f}", f"{flops / t_fk / 1e9:.0f}"]
                        for bk in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
                            t = peers.get(bk)
                            row += [f"{t:.3f}", f"{flops / t / 1e9:.0f}", f"{t / t_fk:.2f}"] if t else ["n/a", "", ""]
                        row.append(f"{diff:.1e}")
                        emit(["| " + " | ".join(row) + " |"], args.out)
                    if args.sm90_variants:
                        fk.set_sm90_variant(2)  # the default (auto)
                    del sets, q, k, v, o, ref
                    torch.cuda.empty_cache()


def make_paged(batch, ctx_lens, q_lens, hq, hkv, d, page, dtype, seed=0):
    """Random pool with shuffled blocks; returns device and host index arrays and contiguous K/V."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    blocks_per = [(c + page - 1) // page for c in ctx_lens]
    max_blocks = max(blocks_per)
    total = sum(blocks_per)
    perm = torch.randperm(total, generator=g).to(torch.int32)
    table = torch.zeros(batch, max_blocks, dtype=torch.int32)
    pos = 0
    for b, n in enumerate(blocks_per):
        table[b, :n] = perm[pos:pos + n]
        pos += n
    k_pool = torch.randn(total, hkv, page, d, device="cuda", dtype=dtype)
    v_pool = torch.randn(total, hkv, page, d, device="cuda", dtype=dtype)
    cu_q = torch.zeros(batch + 1, dtype=torch.int32)
    cu_q[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
    cu_kv = torch.zeros(batch + 1, dtype=torch.int32)
    cu_kv[1:] = torch.cumsum(torch.tensor(ctx_lens, dtype=torch.int32), 0)
    tq = int(cu_q[-1])
    q = torch.randn(tq, hq, d, device="cuda", dtype=dtype)
    out = torch.empty_like(q)
    host = {"table": table, "cu_q": cu_q, "cu_kv": cu_kv}
    return dict(q=q, out=out, k_pool=k_pool, v_pool=v_pool, table=table.cuda(), cu_q=cu_q.cuda(),
                cu_kv=cu_kv.cuda(), host=host, max_q=max(q_lens), max_kv=max(ctx_lens), table_cpu=table)


def gather(pool, table_row, ctx, page):
    """Blocks of one sequence -> contiguous [Hkv, ctx, D] (what a user without a paged kernel does)."""
    nb = (ctx + page - 1) // page
    blocks = pool[table_row[:nb].long()]               # [nb, Hkv, page, D]
    return blocks.permute(1, 0, 2, 3).reshape(pool.shape[1], nb * page, pool.shape[3])[:, :ctx]


def paged_decode(fk, args, copy_gbs):
    hq, hkv, d, page = 32, 8, 128, 16
    dtype, code = torch.float16, 1
    lines = [f"## Paged decode (Hq=32, Hkv=8, D=128, page 16, fp16); copy ceiling this run {copy_gbs:.0f} GB/s", "",
             "| batch | context | KV MiB | flashkv us | GB/s | % of copy | SDPA cuDNN (contiguous) us | x cuDNN | SDPA flash us | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    emit(lines, args.out)
    for batch in args.decode_batches:
        for ctx in args.decode_contexts:
            kv_bytes = 2 * batch * ctx * hkv * d * 2
            if kv_bytes > args.max_kv_gib * 2**30:
                continue
            nsets = max(1, math.ceil(4 * L2_BYTES / kv_bytes))
            sets = []
            for i in range(nsets):
                pg = make_paged(batch, [ctx] * batch, [1] * batch, hq, hkv, d, page, dtype, seed=i)
                # Contiguous K/V of the same values for SDPA: [B, Hkv, ctx, D].
                kc = torch.stack([gather(pg["k_pool"], pg["table"][b], ctx, page) for b in range(batch)])
                vc = torch.stack([gather(pg["v_pool"], pg["table"][b], ctx, page) for b in range(batch)])
                pg["kc"], pg["vc"], pg["q4"] = kc, vc, pg["q"].view(batch, hq, 1, d)
                sets.append(pg)
            run = lambda x: fk.paged(x["q"], x["out"], x["k_pool"], x["v_pool"], x["table"], x["cu_q"],
                                     x["cu_kv"], x["host"], x["max_q"], x["max_kv"], True, code)
            pg = sets[0]
            run(pg)
            ref = sdpa(SDPBackend.CUDNN_ATTENTION, pg["q4"], pg["kc"], pg["vc"], False, gqa=True)
            diff = (pg["out"].view(batch, hq, 1, d).float() - ref.float()).abs().max().item()
            t_fk = time_gpu(run, sets, args.reps, busy_cycles=4_000_000)
            gbs = kv_bytes / (t_fk * 1e-3) / 1e9
            row = [str(batch), str(ctx), f"{kv_bytes / 2**20:.0f}", f"{t_fk * 1e3:.0f}", f"{gbs:.0f}",
                   f"{100 * gbs / copy_gbs:.0f}%"]
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
                try:
                    t = time_gpu(lambda x: sdpa(backend, x["q4"], x["kc"], x["vc"], False, gqa=True), sets, args.reps)
                    row += [f"{t * 1e3:.0f}"] + ([f"{t / t_fk:.2f}"] if backend == SDPBackend.CUDNN_ATTENTION else [])
                except RuntimeError as e:
                    row += ["n/a"] + ([""] if backend == SDPBackend.CUDNN_ATTENTION else [])
                    print(f"# {backend} failed: {e}", file=sys.stderr)
            row.append(f"{diff:.1e}")
            emit(["| " + " | ".join(row) + " |"], args.out)
            del sets, pg, ref
            torch.cuda.empty_cache()


def mixed_batch(fk, args):
    hq, hkv, d, page = 32, 8, 128, 16
    dtype, code = torch.float16, 1
    g = torch.Generator().manual_seed(5)
    ctx = [int(x) for x in torch.randint(2048, 8193, (256,), generator=g)]
    q_lens = [512] * 8 + [1] * 248
    pg = make_paged(256, ctx, q_lens, hq, hkv, d, page, dtype, seed=3)
    run = lambda x: fk.paged(x["q"], x["out"], x["k_pool"], x["v_pool"], x["table"], x["cu_q"],
                             x["cu_kv"], x["host"], x["max_q"], x["max_kv"], True, code)
    cu_q = pg["host"]["cu_q"].tolist()

    def baseline(x):
        outs = []
        for b in range(256):
            k = gather(x["k_pool"], x["table"][b], ctx[b], page).unsqueeze(0)
            v = gather(x["v_pool"], x["table"][b], ctx[b], page).unsqueeze(0)
            q = x["q"][cu_q[b]:cu_q[b + 1]].permute(1, 0, 2).unsqueeze(0)
            if q_lens[b] == 1:
                o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            else:
                from torch.nn.attention.bias import causal_lower_right
                kr = k.repeat_interleave(hq // hkv, dim=1)
                vr = v.repeat_interleave(hq // hkv, dim=1)
                o = F.scaled_dot_product_attention(q, kr, vr, attn_mask=causal_lower_right(q_lens[b], ctx[b]))
            outs.append(o.squeeze(0).permute(1, 0, 2))
        return torch.cat(outs)

    run(pg)
    ref = baseline(pg)
    diff = (pg["out"].float() - ref.float()).abs().max().item()
    t_fk = time_gpu(run, [pg], args.reps, busy_cycles=4_000_000)
    t_base = time_gpu(baseline, [pg], max(5, args.reps // 3), warmup=1, busy_cycles=60_000_000)
    kv_bytes = 2 * sum(ctx) * hkv * d * 2
    lines = ["## Mixed batch: 8 prefill chunks of 512 + 248 decodes, contexts 2k-8k (Hq=32, Hkv=8, D=128, fp16)", "",
             "| flashkv (one paged call) ms | gather + SDPA per sequence ms | speed-up | KV MiB | max abs diff |",
             "|---|---|---|---|---|",
             f"| {t_fk:.3f} | {t_base:.3f} | {t_base / t_fk:.1f}x | {kv_bytes / 2**20:.0f} | {diff:.1e} |"]
    emit(lines, args.out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"])
    ap.add_argument("--head-dims", nargs="+", type=int, default=[64, 128, 256])
    ap.add_argument("--seqlens", nargs="+", type=int, default=[512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--decode-batches", nargs="+", type=int, default=[1, 4, 16, 32, 64, 128, 256])
    ap.add_argument("--decode-contexts", nargs="+", type=int, default=[1024, 4096, 16384, 32768])
    ap.add_argument("--max-kv-gib", type=float, default=8.0)
    ap.add_argument("--sections", nargs="+", default=["fixed", "decode", "mixed"])
    ap.add_argument("--sm90-variants", nargs="+", default=[],
                    choices=list(SM90_VARIANTS.values()),
                    help="time these sm90 kernel variants side by side (a variant column is added)")
    args = ap.parse_args()
    fk = Flashkv(args.lib)
    names = {n: v for v, n in SM90_VARIANTS.items()}
    args.sm90_variants = [names[n] for n in args.sm90_variants]
    props = torch.cuda.get_device_properties(0)
    header = [f"# flashkv side by side: {props.name}, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    emit(header, args.out)
    copy_gbs = copy_bandwidth()
    emit([f"Device-to-device copy (bytes read + written): {copy_gbs:.0f} GB/s"], args.out)
    if "fixed" in args.sections:
        fixed_grid(fk, args)
    if "decode" in args.sections:
        paged_decode(fk, args, copy_gbs)
    if "mixed" in args.sections:
        mixed_batch(fk, args)


if __name__ == "__main__":
    main()
