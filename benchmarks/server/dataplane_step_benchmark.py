#!/usr/bin/env python3
"""Per-layer decode steps with tensors in the Step messages (bytes) vs in a shared-memory region
(shm), measured by flashkv-loadgen against flashkv-server over a Unix socket and loopback TCP.
Planes ending in -batch send each layer as one StepBatch (one descriptor per tensor for the whole
batch, flashkv-loadgen --step-format=batch) instead of one StepEntry per sequence; planes ending
in -pass send decode passes (--step-format=pass: layer 0's StepBatch names the sequences once for
every layer of the token, later layers carry only the pass id and the tensors).

One model runner (one StepStream, pipeline depth 1: layer l+1 waits for layer l, as in a real
model) decodes a batch of B sequences; each Step carries one token per sequence at the per-layer
shapes of a Llama-8B-like layer (Hq 32, Hkv 8, D 128, fp16 by default). For every decode step the
server reports its kernel time (KV append + paged attention) and its own time (arrival to response
encoded); the table gives, per step:

  step       round-trip latency seen by the runner
  kernel     the server's kernel time
  overhead   step - kernel: everything but the kernels (client, gRPC, transport, server)
  server     the server's part of it: its own time - kernel
  tok/s      B / step p50 (one layer's decode throughput)

With --transport-benchmark, the bare gRPC stream round trip of a 1 KiB message (client and server
in one process) is measured first, as the transport's floor on this machine.

shm regions are CUDA device memory (CUDA IPC) when the server computes on one CUDA device and the
loadgen has CUDA, else host memory (--region-memory; the `mem` column says which). With --verify F
a fraction F of the steps is recomputed on the CPU (outputs poisoned first); a cell with any
mismatch or unexpected error, or (--expect-region-memory) regions in other memory than expected,
is reported and the script exits 1 after the table.

  python3 benchmarks/server/dataplane_step_benchmark.py \\
      --server build/release/server/flashkv-server \\
      --loadgen build/release/client/flashkv-loadgen \\
      --transport-benchmark build/release/benchmarks/server/transport_benchmark
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time


def cpu_list(text):
    """'2-3,8' -> {2, 3, 8} (taskset's list syntax); None for an empty text."""
    if not text:
        return None
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def pinned_to(cpus):
    """A preexec_fn that keeps the child (and its threads) on `cpus`, or None."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_server(args, listen):
    command = [args.server, f"--backend={args.backend}", f"--listen={listen}", "--plaintext",
               "--metrics-address=off", f"--layers={args.layers}", f"--q-heads={args.q_heads}",
               f"--kv-heads={args.kv_heads}", f"--head-dim={args.head_dim}",
               f"--dtype={args.dtype}", "--log-level=info"]
    if args.backend == "cpu":
        command += [f"--cpu-threads={args.cpu_threads}", f"--kv-cache-bytes={args.kv_cache}"]
    command += args.server_arg
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=pinned_to(cpu_list(args.server_cpus)))
    ready = threading.Event()
    where = {}
    log = []

    def drain():
        for line in process.stdout:
            log.append(line)
            m = re.search(r"serving on (\S+)", line)
            if m and "target" not in where:
                where["target"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(120) or "target" not in where:
        process.kill()
        sys.exit("server did not start:\n" + "".join(log[-20:]))
    return process, where["target"]


def run_loadgen(args, target, batch, plane):
    command = [args.loadgen, f"--target={target}", "--runners=1",
               f"--max-batch={batch}", f"--prompt-len={args.prompt_len}",
               f"--output-len={args.output_len}",
               f"--max-pass-tokens={max(batch * args.prompt_len, batch, 256)}",
               f"--prefill-chunk={args.prompt_len}", "--verify=none", "--no-token-ids",
               f"--duration={args.duration}", "--progress=none", "--json",
               f"--data-plane={plane.split('-')[0]}",
               f"--region-memory={args.region_memory}"]
    if plane.startswith("shm") and args.shm_inputs != "host":
        command.append(f"--inputs={args.shm_inputs}")
    if args.layer_gap_us > 0:
        command.append(f"--layer-gap-us={args.layer_gap_us}")
    step_format = plane.partition("-")[2]
    if step_format:  # (only then: loadgens from before StepBatch lack the flag)
        command.append(f"--step-format={step_format}")
    command[command.index("--verify=none")] = f"--verify={args.verify}"
    done = subprocess.run(command, capture_output=True, text=True,
                          preexec_fn=pinned_to(cpu_list(args.loadgen_cpus)))
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = None
    # 3: mismatches, 4: unexpected errors; the report says which.
    problem = None
    if done.returncode != 0:
        problem = (f"flashkv-loadgen exited {done.returncode}: {' '.join(command)}\n"
                   f"{done.stderr[-2000:]}")
        if report is not None:
            problem += "\n" + json.dumps({"errors": report.get("errors"),
                                          "verification": report.get("verification")})[:4000]
    elif report is None:
        problem = f"flashkv-loadgen printed no JSON report: {done.stdout[-500:]}"
    elif plane.startswith("shm") and args.expect_region_memory and \
            report["config"].get("region_memory") != args.expect_region_memory:
        problem = (f"shm regions were in {report['config'].get('region_memory')!r} memory, "
                   f"expected {args.expect_region_memory!r}")
    return report, problem


def transport_floor(binary, unix):
    """p50 of a 1 KiB gRPC stream round trip (flashkv transport settings), in microseconds."""
    command = [binary, "--quick", "--sizes", "1024", "--variants", "flashkv"]
    if unix:
        command.append("--unix")
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[2] == "stream" and fields[3] == "flashkv":
            return float(fields[5])
    return None


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="flashkv-server binary")
    p.add_argument("--loadgen", required=True, help="flashkv-loadgen binary")
    p.add_argument("--transport-benchmark", help="transport_benchmark binary (floor row)")
    p.add_argument("--backend", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--transports", default="unix,tcp")
    p.add_argument("--planes", default="bytes,shm,shm-batch",
                   help="bytes, shm, bytes-batch, shm-batch, bytes-pass, shm-pass (comma-separated)")
    p.add_argument("--duration", type=float, default=10, help="seconds per cell")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="CPU backend kernel threads (leave cores to the client)")
    p.add_argument("--kv-cache", default="2GiB", help="CPU backend KV pool")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra flashkv-server flag (repeatable), e.g. --server-arg=--devices=0")
    p.add_argument("--region-memory", default="auto", choices=["auto", "host", "cuda"],
                   help="where shm regions live (flashkv-loadgen --region-memory)")
    p.add_argument("--shm-inputs", default="host", choices=["host", "device"],
                   help="where shm cells' runners make q/k/v (flashkv-loadgen --inputs; device "
                        "needs CUDA regions)")
    p.add_argument("--layer-gap-us", type=float, default=0,
                   help="the runner's own work between layer steps (flashkv-loadgen --layer-gap-us)")
    p.add_argument("--expect-region-memory", choices=["host", "cuda"],
                   help="fail a shm cell whose regions were elsewhere")
    p.add_argument("--verify", default="none",
                   help="fraction of steps recomputed on the CPU (flashkv-loadgen --verify)")
    p.add_argument("--server-cpus", help="keep the server's threads on these CPUs (e.g. 2-3)")
    p.add_argument("--loadgen-cpus", help="keep the load generator's threads on these CPUs")
    p.add_argument("--json-out", help="also write the rows here")
    args = p.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    planes = args.planes.split(",")
    rows, floors, problems = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for transport in args.transports.split(","):
            if args.transport_benchmark:
                floors[transport] = transport_floor(args.transport_benchmark, transport == "unix")
            listen = f"unix:{tmp}/flashkv.sock" if transport == "unix" else "127.0.0.1:0"
            process, target = start_server(args, listen)
            if transport == "unix":
                target = listen
            try:
                for batch in batches:
                    for plane in planes:
                        load = load_average()
                        report, problem = run_loadgen(args, target, batch, plane)
                        if problem:
                            problems.append(f"{transport} {plane} batch {batch}: {problem}")
                        if report is not None:
                            rows.append((transport, plane, batch, load, report))
                        print(f"  {transport} {plane} batch {batch}: "
                              f"{'FAILED' if problem else 'done'}", file=sys.stderr)
            finally:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()

    elem = {"fp16": 2, "bf16": 2, "fp32": 4}[args.dtype]
    per_token = (2 * args.q_heads + 2 * args.kv_heads) * args.head_dim * elem  # q, k, v in; out
    print(f"Decode steps, {args.backend} backend, Hq={args.q_heads} Hkv={args.kv_heads} "
          f"D={args.head_dim} {args.dtype}, 1 runner, pipeline depth 1, {args.duration:g} s per "
          f"cell, {os.cpu_count()} cores; shm inputs made on the {args.shm_inputs}, "
          f"{args.layer_gap_us:g} us of runner work between layers; times in microseconds "
          f"(p50 unless marked)")
    for transport, floor in floors.items():
        if floor is not None:
            print(f"transport floor ({transport}): bare gRPC stream round trip of 1 KiB, p50 "
                  f"{floor:.0f} us")
    header = (f"{'transport':9} {'plane':9} {'mem':4} {'batch':>5} {'MiB/step':>8} {'steps':>6} "
              f"{'step':>8} {'step p99':>9} {'kernel':>8} {'overhead':>9} {'ovh p99':>8} "
              f"{'server':>7} {'tok/s':>9} {'ovh/kern':>8} {'load':>5}")
    print(header)
    out_rows = []
    for transport, plane, batch, load, report in rows:
        lat = report["latency"]
        memory = report["config"].get("region_memory") or "-"
        checked = report["verification"]["steps_checked"]
        if "decode Step" not in lat:
            print(f"{transport:9} {plane:9} {memory:4} {batch:5}  (no decode steps measured)")
            continue
        us = lambda key, q="p50_ms": lat[key][q] * 1000  # noqa: E731
        step, kernel = us("decode Step"), us("decode Step kernel")
        overhead, server = us("decode Step overhead"), us("decode Step server overhead")
        row = {"transport": transport, "plane": plane, "region_memory": memory, "batch": batch,
               "steps_verified": checked,
               "mismatched_entries": report["verification"]["mismatched_entries"],
               "mib_per_step": batch * per_token / 2**20, "steps": lat["decode Step"]["count"],
               "step_p50_us": step, "step_p99_us": us("decode Step", "p99_ms"),
               "kernel_p50_us": kernel, "overhead_p50_us": overhead,
               "overhead_p99_us": us("decode Step overhead", "p99_ms"),
               "server_overhead_p50_us": server,
               # Over every layer: a decode pass's layer-0 step does the per-sequence work of all.
               "server_overhead_mean_us": us("decode Step server overhead", "mean_ms"),
               "tokens_per_s": batch / (step * 1e-6),
               "load_average": load}
        # The server's overhead in stages (StepResponse.queue_ns / launch_ns; servers from
        # before those fields report none): p50 and mean of each.
        for key, name in (("queue", "decode Step server queue"),
                          ("launch_host", "decode Step server launch host"),
                          ("completion", "decode Step server completion")):
            if name in lat:
                row[f"{key}_p50_us"] = us(name)
                row[f"{key}_mean_us"] = us(name, "mean_ms")
        out_rows.append(row)
        print(f"{transport:9} {plane:9} {memory:4} {batch:5} {row['mib_per_step']:8.3f} {row['steps']:6} "
              f"{step:8.0f} {row['step_p99_us']:9.0f} {kernel:8.0f} {overhead:9.0f} "
              f"{row['overhead_p99_us']:8.0f} {server:7.0f} {row['tokens_per_s']:9.0f} "
              f"{overhead / max(kernel, 1e-9):8.2f} {load:5.1f}")
    # The figure: the server's own overhead (server_ns - kernel_ns), p50, per batch.
    print("server overhead (server_ns - kernel_ns) p50 / mean over the layers, us:")
    for transport in args.transports.split(","):
        for batch in batches:
            cells = [f"{r['plane']}({r['region_memory']}) {r['server_overhead_p50_us']:.0f}"
                     f" / {r['server_overhead_mean_us']:.0f}"
                     for r in out_rows if r["transport"] == transport and r["batch"] == batch]
            kernel = [r["kernel_p50_us"] for r in out_rows
                      if r["transport"] == transport and r["batch"] == batch]
            if cells:
                print(f"  {transport:4} batch {batch:4}: {', '.join(cells)}; kernel p50 "
                      f"{min(kernel):.0f}")
    staged = [r for r in out_rows if "queue_p50_us" in r]
    if staged:
        print("server overhead in stages, p50 / mean us: queue (arrival to launch: decode, checks, "
              "wait), launch host (launch minus kernels), completion (launch end to response):")
        for r in staged:
            print(f"  {r['transport']:4} {r['plane']:9} batch {r['batch']:4}: "
                  f"queue {r['queue_p50_us']:.0f} / {r['queue_mean_us']:.0f}, "
                  f"launch host {r['launch_host_p50_us']:.0f} / {r['launch_host_mean_us']:.0f}, "
                  f"completion {r['completion_p50_us']:.0f} / {r['completion_mean_us']:.0f}")
    verified = sum(r["steps_verified"] for r in out_rows)
    print(f"verification: {verified} steps recomputed on the CPU (--verify {args.verify}), "
          f"{sum(r['mismatched_entries'] for r in out_rows)} mismatched entries")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"floors_us": floors, "rows": out_rows, "problems": problems}, f, indent=2)
    if problems:
        print(f"FAILED: {len(problems)} cell(s)", file=sys.stderr)
        for problem in problems:
            print("  " + problem, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
