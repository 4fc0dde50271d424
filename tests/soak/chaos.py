#!/usr/bin/python3
"""The soak test's misbehaving client (tests/soak/soak.py starts it): threads that, until
--duration runs out, open step streams and cancel them mid-stream, give calls deadlines too short
to meet, and create sequences they never free (the server's --sequence-ttl must reclaim them).
Every call runs under a watchdog: one that returns neither a value nor a status within
--hang-seconds counts as a hang. Prints one JSON object: calls and outcomes by kind and status
code, hangs, wrong answers (an OK step whose output has the wrong shape: the client library
checks every answer).

Needs the flashkv Python package with generated protos on PYTHONPATH (the build's
tests/python/package) and Debian's python3-grpcio and python3-numpy.
"""

import argparse
import collections
import concurrent.futures
import json
import os
import random
import sys
import threading
import time

import numpy as np

import flashkv
from flashkv.errors import FlashkvError


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = collections.Counter()  # "kind CODE" -> count
        self.hangs = 0
        self.other_errors = []

    def add(self, kind, code):
        with self.lock:
            self.outcomes[f"{kind} {code}"] += 1


class Chaos:
    def __init__(self, args):
        self.args = args
        self.client = flashkv.Client(args.target, bearer_token=args.token, default_timeout=30)
        info = self.client.cache_info(timeout=30)
        self.layers = info.num_layers
        self.hq, self.hkv, self.d = info.num_q_heads, info.num_kv_heads, info.head_dim
        self.dtype = {1: np.float16, 3: np.float32}.get(info.dtype, np.float16)
        self.tally = Tally()
        self.deadline = time.monotonic() + args.duration
        # One thread per call runs it, so a call that never returns cannot stop the run.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=4 * args.threads + 4)

    def array(self, rng, shape):
        return np.random.default_rng(rng.getrandbits(32)).uniform(-1, 1, shape).astype(self.dtype)

    def tensors(self, rng, n):
        return (self.array(rng, (n, self.hq, self.d)), self.array(rng, (n, self.hkv, self.d)),
                self.array(rng, (n, self.hkv, self.d)))

    def call(self, kind, fn):
        """Runs fn() under the watchdog; returns its value or None, tallying the outcome."""
        future = self.pool.submit(fn)
        try:
            value = future.result(timeout=self.args.hang_seconds)
            self.tally.add(kind, "OK")
            return value
        except concurrent.futures.TimeoutError:
            with self.tally.lock:
                self.tally.hangs += 1
            self.tally.add(kind, "HANG")
        except FlashkvError as e:
            self.tally.add(kind, e.code.name)
        except Exception as e:  # noqa: BLE001 - anything else is a finding, reported
            with self.tally.lock:
                self.tally.other_errors.append(f"{kind}: {type(e).__name__}: {e}")
            self.tally.add(kind, "EXCEPTION")
        return None

    def free(self, seq):
        self.call("free", lambda: self.client.free_sequence(seq, timeout=10))

    # --- episodes ------------------------------------------------------------------------------

    def cancel_stream(self, rng, seq):
        """Creates a sequence, sends a few layers on a stream and cancels it mid-way."""
        if self.call("create", lambda: self.client.create_sequence(seq, timeout=10)) is None:
            return
        n = rng.randint(1, 24)
        q, k, v = self.tensors(rng, n)
        session = self.client.open_step_session(response_timeout=10)
        sent = rng.randint(1, self.layers)

        def run():
            for layer in range(sent):
                session.send(layer, [(seq, q, k, v)])
            if rng.random() < 0.5:
                session.receive()
            session.cancel()

        self.call("stream_cancel", run)
        if rng.random() < 0.7:
            self.free(seq)

    def short_deadlines(self, rng, seq):
        """Create and step with deadlines of 0.1-3 ms: some expire, some make it."""
        timeout = rng.uniform(0.0001, 0.003)
        if self.call("create_deadline",
                     lambda: self.client.create_sequence(seq, timeout=timeout)) is None:
            self.free(seq)  # it may exist though the caller gave up: NOT_FOUND otherwise
            return
        q, k, v = self.tensors(rng, rng.randint(1, 64))
        self.call("step_deadline",
                  lambda: self.client.step(0, [(seq, q, k, v)], timeout=rng.uniform(0.0005, 0.01)))
        self.free(seq)

    def abandon(self, rng, seq):
        """A sequence with K/V, never freed: the TTL reaper's work."""
        if self.call("create", lambda: self.client.create_sequence(seq, timeout=10)) is None:
            return
        q, k, v = self.tensors(rng, rng.randint(1, 32))
        self.call("step", lambda: self.client.step(0, [(seq, q, k, v)], timeout=10))

    def attention_deadline(self, rng, _seq):
        b, s = rng.randint(1, 2), rng.randint(1, 64)
        q = self.array(rng, (b, s, self.hq, self.d))
        k = self.array(rng, (b, s, self.hkv, self.d))
        self.call("attention_deadline",
                  lambda: self.client.attention(q, k, k, causal=True,
                                                timeout=rng.uniform(0.0002, 0.005)))

    def worker(self, index):
        rng = random.Random(self.args.seed * 1000 + index)
        episodes = [self.cancel_stream, self.short_deadlines, self.abandon,
                    self.attention_deadline]
        count = 0
        while time.monotonic() < self.deadline:
            seq = f"{self.args.run_id}-c{index}-{count}"
            count += 1
            episodes[rng.randrange(len(episodes))](rng, seq)
            time.sleep(rng.uniform(0, 0.05))

    def run(self):
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True)
                   for i in range(self.args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.args.duration + 4 * self.args.hang_seconds)
        return {"outcomes": dict(sorted(self.tally.outcomes.items())),
                "calls": sum(self.tally.outcomes.values()),
                "hangs": self.tally.hangs,
                "stuck_workers": sum(t.is_alive() for t in threads),
                "other_errors": self.tally.other_errors[:10]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--threads", type=int, default=3)
    p.add_argument("--hang-seconds", type=float, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-id", default="chaos")
    args = p.parse_args()
    report = Chaos(args).run()
    print(json.dumps(report))
    sys.stdout.flush()
    # Abandoned watchdog threads (a hang) must not keep the process alive.
    os._exit(0)


if __name__ == "__main__":
    main()
