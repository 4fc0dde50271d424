#!/usr/bin/python3
"""Soak test of flashkv-server on the CPU backend (docs/reliability.md#soak).

Rounds of load against one server: a verifying flashkv-loadgen per tenant (equal loads, to
measure fairness), a runaway tenant with several times their load, a load generator whose
deadlines are too short to meet, load generators killed mid-stream (SIGKILL) or interrupted
(SIGINT), and tests/soak/chaos.py (streams cancelled mid-way, expiring deadlines, sequences never
freed). Some rounds send the server SIGTERM mid-load and start it again on the same port.

After every round, with every client gone: each load generator verified every output it got
(--verify all; 0 mismatches), every client process ended by itself and every chaos call returned
a status (no hang), the server is idle and its pool whole (GetStats: 0 sequences once the TTL has
reclaimed the abandoned ones, 0 blocks used, free + cached == total), its RSS is sampled, and the
equal tenants' throughputs are compared. A drained server must exit 0. Exit status 0 when every
check held; the JSON report (--out) holds every figure.

  tests/soak/soak.py --build build/ci --short           # about a minute (CI)
  tests/soak/soak.py --build build/release --duration 900 --out soak.json
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Small, so a CPU server keeps up and the pool fills (swapping, RESOURCE_EXHAUSTED, reclaiming).
MODEL = ["--layers=2", "--q-heads=4", "--kv-heads=2", "--head-dim=64", "--dtype=fp16",
         "--page-size=16"]
TENANTS = ["tenant-a", "tenant-b", "tenant-c"]
RUNAWAY = "tenant-runaway"
SEQUENCE_TTL_S = 3


def log(message):
    print(f"soak: {message}", flush=True)


class Failures:
    def __init__(self):
        self.items = []

    def check(self, ok, message):
        if not ok:
            self.items.append(message)
            log("FAIL: " + message)
        return ok


class Server:
    """One flashkv-server process at a time on a fixed address (restarts reuse the port)."""

    def __init__(self, build, workdir, extra):
        self.binary = os.path.join(build, "server", "flashkv-server")
        self.cli = os.path.join(build, "client", "flashkv")
        self.workdir = workdir
        self.extra = extra
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.process = None
        self.starts = 0
        self.admin_token_file = None

    def start(self):
        self.starts += 1
        log_path = os.path.join(self.workdir, f"server-{self.starts}.log")
        args = [self.binary, *MODEL, "--backend=cpu", f"--listen={self.target}",
                "--metrics-address=off", "--kv-cache-bytes=8MiB", "--swap-bytes=4MiB",
                "--max-context=1024", f"--sequence-ttl={SEQUENCE_TTL_S}s", "--drain-deadline=5s",
                "--batch-window=200us", "--cpu-threads=1", "--log-level=warn", *self.extra]
        self.log_file = open(log_path, "w")
        self.process = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start ({self.process.returncode}); "
                                   f"log: {log_path}")
            if self.cli_json("health") is not None:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the server did not become healthy; log: {log_path}")

    def cli_json(self, command):
        args = [self.cli, f"--target={self.target}", "--timeout=10", "--json"]
        if self.admin_token_file:
            args.append(f"--token-file={self.admin_token_file}")
        try:
            done = subprocess.run(args + [command], capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def terminate(self, timeout):
        """SIGTERM; returns (exit code or None if it had to be killed, seconds to exit)."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        self.log_file.close()
        return code, time.monotonic() - start


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_flags(build):
    """What this server build accepts (the security flags arrived with issue 8)."""
    done = subprocess.run([os.path.join(build, "server", "flashkv-server"), "--help"],
                          capture_output=True, text=True)
    return done.stdout


class Client:
    """A client process: a load generator or chaos.py."""

    def __init__(self, name, kind, args, workdir, env=None, report=None):
        self.name, self.kind, self.report_path = name, kind, report
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT,
                                        env=env)
        self.signalled = None
        self.hung = False

    def signal(self, sig):
        if self.process.poll() is None:
            self.signalled = sig
            self.process.send_signal(sig)

    def wait(self, deadline):
        try:
            self.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.hung = True
            self.process.kill()
            self.process.wait()
        self.log_file.close()
        return self.process.returncode

    def report(self):
        if self.report_path and os.path.exists(self.report_path):
            with open(self.report_path) as f:
                return json.load(f)
        if self.kind == "chaos":
            with open(self.log_path) as f:
                lines = [line for line in f if line.startswith("{")]
            return json.loads(lines[-1]) if lines else None
        return None


class Soak:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build)
        self.workdir = tempfile.mkdtemp(prefix="flashkv-soak-")
        self.failures = Failures()
        self.rng = random.Random(args.seed)
        self.tokens = {}
        extra = []
        flags = server_flags(self.build)
        if "--plaintext" in flags:
            extra.append("--plaintext")
        if "--tokens-file" in flags:
            extra += ["--tokens-file", self.write_tokens()]
        self.server = Server(self.build, self.workdir, extra)
        if self.tokens:
            self.server.admin_token_file = self.token_file(TENANTS[0])
        self.rounds = []
        self.package = os.path.join(self.build, "tests", "python", "package")

    def write_tokens(self):
        path = os.path.join(self.workdir, "tokens.txt")
        with open(path, "w") as f:
            for tenant in TENANTS + [RUNAWAY, "chaos", "victims"]:
                token = "soak-" + tenant + "-" + "%032x" % self.rng.getrandbits(128)
                self.tokens[tenant] = token
                f.write(f"{token} {tenant}\n")
        return path

    def token_file(self, tenant):
        if tenant not in self.tokens:
            return None
        path = os.path.join(self.workdir, f"token-{tenant}")
        with open(path, "w") as f:
            f.write(self.tokens[tenant] + "\n")
        return path

    # --- clients ----------------------------------------------------------------------------

    def loadgen(self, name, tenant, round_s, extra, seed):
        report = os.path.join(self.workdir, f"{name}.json")
        args = [os.path.join(self.build, "client", "flashkv-loadgen"),
                f"--target={self.server.target}", f"--duration={round_s}", "--verify=all",
                "--prompt-len=uniform:8:96", "--output-len=uniform:4:32", "--prefix-pool=4",
                "--prefix-len=uniform:16:48", "--prefix-fraction=0.5", "--prefill-chunk=64",
                "--cpu-threads=1", "--progress=none", f"--seed={seed}", f"--run-id={name}",
                f"--out={report}", "--expect=RESOURCE_EXHAUSTED", *extra]
        token_file = self.token_file(tenant)
        if token_file:
            args.append(f"--token-file={token_file}")
        return Client(name, "loadgen", args, self.workdir, report=report)

    def chaos(self, name, round_s, seed):
        env = dict(os.environ, PYTHONPATH=self.package, PYTHONDONTWRITEBYTECODE="1")
        args = ["/usr/bin/python3", os.path.join(HERE, "chaos.py"),
                f"--target={self.server.target}", f"--duration={round_s}", "--threads=3",
                f"--seed={seed}", f"--run-id={name}", "--hang-seconds=30"]
        if "chaos" in self.tokens:
            args.append(f"--token={self.tokens['chaos']}")
        return Client(name, "chaos", args, self.workdir, env=env)

    # --- one round --------------------------------------------------------------------------

    def run_round(self, index, round_s, restart):
        tag = f"r{index}"
        clients = [self.loadgen(f"{tag}-{t}", t, round_s, ["--runners=2", "--max-batch=4"],
                                index * 100 + i) for i, t in enumerate(TENANTS)]
        clients.append(self.loadgen(f"{tag}-runaway", RUNAWAY, round_s,
                                    ["--runners=6", "--max-batch=8", "--pipeline-depth=2"],
                                    index * 100 + 10))
        clients.append(self.loadgen(
            f"{tag}-deadlines", "victims", round_s,
            ["--runners=2", "--max-batch=4", "--rpc-timeout=0.03", "--expect=DEADLINE_EXCEEDED"],
            index * 100 + 11))
        victims = [self.loadgen(f"{tag}-victim{i}", "victims", round_s,
                                ["--runners=2", "--max-batch=4"], index * 100 + 20 + i)
                   for i in range(3)]
        clients += victims
        if os.path.isdir(self.package):
            clients.append(self.chaos(f"{tag}-chaos", round_s, index))
        start = time.monotonic()
        # Victims: two killed outright mid-stream, one interrupted (it cancels and reports).
        events = sorted([(self.rng.uniform(0.2, 0.8) * round_s, victims[0], signal.SIGKILL),
                         (self.rng.uniform(0.2, 0.8) * round_s, victims[1], signal.SIGKILL),
                         (self.rng.uniform(0.3, 0.7) * round_s, victims[2], signal.SIGINT)],
                        key=lambda e: e[0])
        drain = None
        for at, victim, sig in events:
            time.sleep(max(0, start + at - time.monotonic()))
            victim.signal(sig)
        if restart:
            time.sleep(max(0, start + 0.6 * round_s - time.monotonic()))
            code, seconds = self.server.terminate(timeout=30)
            drain = {"exit_code": code, "seconds": round(seconds, 2)}
            self.failures.check(code == 0, f"{tag}: the server exited {code} after SIGTERM")
            self.server.start()
        deadline = start + round_s + 90
        for c in clients:
            c.wait(deadline)
        return self.check_round(tag, clients, restart, drain)

    def check_round(self, tag, clients, restart, drain):
        f = self.failures
        summary = {"round": tag, "restart": restart, "drain": drain, "clients": {}}
        throughput = {}
        for c in clients:
            code = c.process.returncode
            report = c.report()
            entry = {"exit": code, "signal": c.signalled and c.signalled.name, "hung": c.hung}
            f.check(not c.hung, f"{c.name} did not finish (killed after the grace time)")
            if c.kind == "loadgen":
                killed = c.signalled == signal.SIGKILL
                f.check(code != 3, f"{c.name}: outputs differed from the CPU recomputation")
                if report is not None:
                    v, e = report["verification"], report["errors"]
                    entry.update(mismatches=v["mismatched_entries"],
                                 checked=v["entries_checked"], unexpected=e["unexpected"],
                                 decode_tps=report["throughput"]["decode_tokens_per_s"],
                                 prefill_tps=report["throughput"]["prefill_tokens_per_s"],
                                 completed=report["requests"]["completed"])
                    f.check(v["mismatched_entries"] == 0, f"{c.name}: {v['mismatched_entries']} "
                            f"mismatched entries, e.g. {v['examples'][:1]}")
                    throughput[c.name.split("-", 1)[1]] = (entry["decode_tps"] +
                                                           entry["prefill_tps"])
                elif not killed:
                    # The deadline client may miss even its first call (GetCacheInfo) on a busy
                    # machine: it then exits 1 having seen DEADLINE_EXCEEDED, which is the point.
                    f.check(c.name.endswith("deadlines") and code == 1 and
                            "DEADLINE_EXCEEDED" in open(c.log_path).read(),
                            f"{c.name}: no report (exit {code})")
                # Without a restart the equal tenants must run clean; the deadline client
                # expects its DEADLINE_EXCEEDED.
                if not restart and not c.signalled and report is not None:
                    f.check(report["clean"], f"{c.name}: unexpected errors {e['unexpected']}")
            else:
                f.check(report is not None, f"{c.name}: no report (exit {code})")
                if report:
                    entry.update(calls=report["calls"], hangs=report["hangs"],
                                 outcomes=report["outcomes"], other=report["other_errors"])
                    f.check(report["hangs"] == 0 and report["stuck_workers"] == 0,
                            f"{c.name}: {report['hangs']} calls hung")
                    f.check(not report["other_errors"], f"{c.name}: {report['other_errors']}")
            summary["clients"][c.name] = entry
        summary["throughput_tokens_per_s"] = throughput
        equal = [throughput[t] for t in TENANTS if t in throughput]
        if len(equal) == len(TENANTS) and min(equal) > 0:
            summary["tenant_spread"] = round(max(equal) / min(equal), 3)
        summary["idle"] = self.check_idle(tag)
        summary["rss_mib"] = round(self.server.rss_mib(), 1)
        log(f"{tag}: rss {summary['rss_mib']} MiB, throughput {throughput}, "
            f"spread {summary.get('tenant_spread')}, idle {summary['idle']}")
        return summary

    def check_idle(self, tag):
        """Waits for the reaper to free abandoned sequences, then checks the pool is whole."""
        deadline = time.monotonic() + SEQUENCE_TTL_S + 20
        stats = None
        while time.monotonic() < deadline:
            stats = self.server.cli_json("stats")
            if stats is not None and stats["sequences"] == 0:
                break
            time.sleep(0.5)
        f = self.failures
        if not f.check(stats is not None, f"{tag}: GetStats failed at idle"):
            return None
        idle = {k: stats[k] for k in ("sequences", "blocks_total", "blocks_free",
                                      "blocks_cached", "blocks_used", "swaps_out", "swaps_in")}
        f.check(stats["sequences"] == 0, f"{tag}: {stats['sequences']} sequences left at idle")
        f.check(stats["blocks_used"] == 0, f"{tag}: {stats['blocks_used']} blocks used at idle")
        # GetStats counts cached blocks among the free ones (kvcache.proto): the cache's
        # free + cached == total is the RPC's free == total, with cached <= free.
        f.check(stats["blocks_free"] == stats["blocks_total"] and
                stats["blocks_cached"] <= stats["blocks_free"],
                f"{tag}: free {stats['blocks_free']} (cached {stats['blocks_cached']} of them) "
                f"!= total {stats['blocks_total']}")
        return idle

    # --- the run ----------------------------------------------------------------------------

    def run(self):
        args = self.args
        rounds = max(2, int(args.duration // args.round_seconds))
        # Restarts in rounds 1, 1 + N, 1 + 2N, ...: each server life after the first has a
        # warm-up round and then N - 1 rounds whose RSS is compared with it.
        restarts = {r for r in range(1, rounds) if r % args.restart_every == 1}
        log(f"{rounds} rounds of {args.round_seconds} s, server restarts in rounds "
            f"{sorted(restarts)}; logs in {self.workdir}")
        self.server.start()
        started = time.monotonic()
        for r in range(rounds):
            self.rounds.append(self.run_round(r, args.round_seconds, r in restarts))
        code, seconds = self.server.terminate(timeout=30)
        self.failures.check(code == 0, f"final SIGTERM: the server exited {code}")
        return self.summarize(restarts, time.monotonic() - started, code, seconds)

    def summarize(self, restarts, elapsed, final_code, final_seconds):
        # RSS must stay flat within one server's life: after the first round (the pool's pages
        # and the allocator's arenas warm up) it may not grow by more than the bound.
        growth = []
        lives, life = [], []
        for r in self.rounds:
            if r["restart"] and life:
                lives.append(life)
                life = []
            life.append(r["rss_mib"])
        lives.append(life)
        for life in lives:
            if len(life) >= 3:
                growth.append(max(life[2:]) - life[1])
        max_growth = max(growth) if growth else 0.0
        self.failures.check(max_growth <= self.args.rss_bound_mib,
                            f"server RSS grew {max_growth:.1f} MiB after warm-up (bound "
                            f"{self.args.rss_bound_mib} MiB)")
        spreads = [r["tenant_spread"] for r in self.rounds if "tenant_spread" in r]
        loadgens = [c for r in self.rounds for c in r["clients"].values() if "checked" in c]
        chaos = [c for r in self.rounds for c in r["clients"].values() if "calls" in c]
        return {
            "elapsed_s": round(elapsed, 1),
            "rounds": len(self.rounds),
            "restarts": sorted(restarts),
            "final_drain": {"exit_code": final_code, "seconds": round(final_seconds, 2)},
            "verified_entries": sum(c["checked"] for c in loadgens),
            "mismatched_entries": sum(c["mismatches"] for c in loadgens),
            "completed_requests": sum(c["completed"] for c in loadgens),
            "clients_killed": sum(1 for r in self.rounds for c in r["clients"].values()
                                  if c["signal"] == "SIGKILL"),
            "clients_interrupted": sum(1 for r in self.rounds for c in r["clients"].values()
                                       if c["signal"] == "SIGINT"),
            "chaos_calls": sum(c["calls"] for c in chaos),
            "chaos_hangs": sum(c["hangs"] for c in chaos),
            "rss_mib_per_round": [r["rss_mib"] for r in self.rounds],
            "rss_growth_after_warmup_mib": round(max_growth, 1),
            "tenant_spread_per_round": spreads,
            "tenant_spread_max": max(spreads) if spreads else None,
            "failures": self.failures.items,
            "per_round": self.rounds,
        }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default="build/ci", help="build directory (server, client, "
                   "tests/python/package)")
    p.add_argument("--duration", type=float, default=600, help="seconds of load in total")
    p.add_argument("--round-seconds", type=float, default=20)
    p.add_argument("--restart-every", type=int, default=8,
                   help="SIGTERM + restart in rounds 1, 1 + N, ...")
    p.add_argument("--short", action="store_true", help="CI form: 5 rounds of 8 s, one restart")
    p.add_argument("--rss-bound-mib", type=float, default=24)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args()
    if args.short:
        args.duration, args.round_seconds, args.restart_every = 40, 8, 1000
    soak = Soak(args)
    try:
        report = soak.run()
    finally:
        if soak.server.process and soak.server.process.poll() is None:
            soak.server.process.kill()
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    summary = {k: v for k, v in report.items() if k != "per_round"}
    print(json.dumps(summary, indent=2))
    if report["failures"]:
        log(f"{len(report['failures'])} failures; logs in {soak.workdir}")
        return 1
    log("clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
