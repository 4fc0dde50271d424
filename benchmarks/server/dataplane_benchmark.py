#!/usr/bin/env python3
"""Bytes in messages vs the shared-memory data plane, through the Python client, at the
per-layer decode shapes of a Llama-8B-like layer (Hq 32, Hkv 8, D 128, fp16): one call carries,
per sequence, one query and one new key/value row (what a decode Step carries), so the kernel
work is a single key per row and the latency is almost all service overhead: serialisation,
transport, request decoding and checks, the executor hop, the response.

Stateless Attention is the call measured (Sq = Skv = 1): the data plane is wired into it first;
Step will carry the same descriptors. Each mode runs against one server over a Unix socket and
over loopback TCP. Prints p50/p99 per call, tokens/s (batch / p50) and shm's speed-up.

  python3 benchmarks/server/dataplane_benchmark.py --server build/server/flashkv-server
  (with PYTHONPATH naming the generated package, e.g. build/tests/python/package)
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import flashkv

HQ, HKV, D = 32, 8, 128


def start_server(binary, listen, threads):
    process = subprocess.Popen(
        [binary, "--backend=cpu", "--plaintext", f"--listen={listen}", "--metrics-address=off", "--layers=1",
         f"--q-heads={HQ}", f"--kv-heads={HKV}", f"--head-dim={D}", "--dtype=fp16",
         "--kv-cache-bytes=64MiB", f"--cpu-threads={threads}", "--attention-threads=1",
         "--log-level=info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()
    where = {}

    def drain():
        for line in process.stdout:
            m = re.search(r"serving on (\S+)", line)
            if m:
                where["target"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(30) or "target" not in where:
        process.kill()
        sys.exit("server did not start")
    return process, where["target"]


def measure(fn, iterations, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def run_transport(name, target, batches, iterations, warmup):
    rows = []
    with flashkv.Client(target) as client:
        client.wait_for_serving(30)
        floor = measure(lambda: client.check_health(), iterations, warmup)
        rows.append((name, "empty call (health)", 0, 0, floor, None))
        rng = np.random.default_rng(0)
        for b in batches:
            q = rng.uniform(-1, 1, (b, 1, HQ, D)).astype(np.float16)
            k = rng.uniform(-1, 1, (b, 1, HKV, D)).astype(np.float16)
            v = rng.uniform(-1, 1, (b, 1, HKV, D)).astype(np.float16)
            payload = q.nbytes * 2 + k.nbytes + v.nbytes  # in and out
            by_bytes = measure(lambda: client.attention(q, k, v, causal=True), iterations, warmup)
            with client.attach_region(4 * payload + 4096) as region:
                rq, rk, rv = region.put(q), region.put(k), region.put(v)
                out = region.empty(q.shape, "fp16")
                by_shm = measure(lambda: client.attention(rq, rk, rv, causal=True, out=out),
                                 iterations, warmup)
                want = client.attention(q, k, v, causal=True).out
                assert np.array_equal(out.array, want), "shm output differs from bytes output"
            rows.append((name, "bytes", b, payload, by_bytes, None))
            rows.append((name, "shm", b, payload, by_shm, by_bytes[0] / by_shm[0]))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="flashkv-server binary")
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--cpu-threads", type=int, default=1)
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, listen in (("unix", f"unix:{tmp}/flashkv.sock"), ("tcp", "127.0.0.1:0")):
            process, target = start_server(args.server, listen, args.cpu_threads)
            try:
                rows += run_transport(name, target if name == "tcp" else listen, batches,
                                      args.iterations, args.warmup)
            finally:
                process.kill()
                process.wait()
    print(f"Stateless attention, Sq=Skv=1, Hq={HQ} Hkv={HKV} D={D} fp16, Python client, "
          f"{args.iterations} calls each, {os.cpu_count()} cores")
    print(f"{'transport':9} {'mode':20} {'batch':>5} {'MiB/call':>9} {'p50 us':>9} "
          f"{'p99 us':>9} {'tokens/s':>10} {'shm speed-up':>12}")
    for name, mode, b, payload, (p50, p99), ratio in rows:
        tokens = f"{b / p50:10.0f}" if b else f"{'':>10}"
        speedup = f"{ratio:11.2f}x" if ratio else ""
        print(f"{name:9} {mode:20} {b:5} {payload / 2**20:9.3f} {p50 * 1e6:9.0f} "
              f"{p99 * 1e6:9.0f} {tokens} {speedup:>12}")


if __name__ == "__main__":
    main()
