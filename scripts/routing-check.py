#!/usr/bin/env python3
"""Checks of scripts/routing-test.sh: did every sequence live on exactly one replica?

  routing-check.py scrape URL FILE          save a replica's Prometheus metrics
  routing-check.py verify --report REPORT --access-log LOG
                          --replica ADDR METRICS_BEFORE METRICS_AFTER ... [--expect-misrouting]

verify reads the load test's JSON report, nginx's routing log (log_format flashkv_routing in
docker/nginx/flashkv.conf) and each replica's metrics before and after the run, and checks:
  - the load test is clean: outputs verified, none mismatched, no unexpected error;
  - every routing key (x-flashkv-sequence) reached exactly one replica, and keys were spread over
    more than one replica (a proxy that sends everything to one place proves nothing);
  - no call answered NOT_FOUND, neither at the proxy nor at any replica;
  - the sequences the replicas created add up to those the load test started, and none is left
    alive on any replica afterwards (each was freed where it lived).
With --expect-misrouting (the self-check with the hash rule removed) it succeeds only when the
routing checks fail, showing that they can. Python 3 standard library only.
"""

import argparse
import collections
import json
import re
import sys
import urllib.request

KV_SERVICE = "/flashkv.v1.KvCacheService/"
NOT_FOUND = "5"  # grpc-status of NOT_FOUND

LOG_LINE = re.compile(
    r'^(?P<msec>\S+) key="(?P<key>(?:[^"\\]|\\.)*)" upstream=(?P<upstream>.*?) '
    r"uri=(?P<uri>\S+) http=(?P<http>\S+) grpc=(?P<grpc>\S*)$"
)
METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url, path):
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    with open(path, "w") as out:
        out.write(text)


def parse_metrics(path):
    """Returns {(name, frozenset(labels.items())): value}."""
    samples = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            m = METRIC_LINE.match(line)
            if not m:
                continue
            labels = frozenset(LABEL.findall(m.group("labels") or ""))
            samples[(m.group("name"), labels)] = float(m.group("value"))
    return samples


def metric_sum(samples, name, **want):
    total = 0.0
    for (sample_name, labels), value in samples.items():
        if sample_name == name and all((k, v) in labels for k, v in want.items()):
            total += value
    return total


class Replica:
    def __init__(self, address, before, after):
        self.address = address
        self.before = parse_metrics(before)
        self.after = parse_metrics(after)

    def delta(self, name, **labels):
        return metric_sum(self.after, name, **labels) - metric_sum(self.before, name, **labels)


def read_routing_log(path):
    """Returns (key -> set of upstreams, count of KvCacheService calls, NOT_FOUND lines)."""
    upstreams = collections.defaultdict(set)
    calls = 0
    not_found = []
    with open(path) as f:
        for line in f:
            m = LOG_LINE.match(line.rstrip("\n"))
            if not m:
                raise ValueError(f"{path}: unexpected line: {line!r}")
            if m.group("grpc") == NOT_FOUND:
                not_found.append(line.strip())
            if not m.group("uri").startswith(KV_SERVICE):
                continue
            calls += 1
            if m.group("key"):
                upstreams[m.group("key")].add(m.group("upstream"))
    return upstreams, calls, not_found


def check_report(report):
    problems = []
    verification = report["verification"]
    if verification["steps_checked"] == 0:
        problems.append("the load test verified no step")
    if verification["mismatched_entries"]:
        problems.append(f"{verification['mismatched_entries']} mismatched entries: "
                        f"{verification['examples'][:3]}")
    if report["errors"]["unexpected"]:
        problems.append(f"unexpected errors: {report['errors']['unexpected']}")
    if report["requests"]["started"] == 0:
        problems.append("the load test started no sequence")
    if not report["clean"]:
        problems.append("the load test's report is not clean")
    return problems


def check_routing(report, replicas, upstreams, kv_calls, not_found_lines):
    problems = []
    if kv_calls == 0:
        problems.append("the routing log holds no KvCacheService call")
    for key, where in sorted(upstreams.items()):
        if len(where) != 1 or "," in next(iter(where)):
            problems.append(f"routing key {key!r} reached {sorted(where)}")
    used = {next(iter(w)) for w in upstreams.values() if len(w) == 1}
    if len(replicas) > 1 and len(used) == 1 and all(len(w) == 1 for w in upstreams.values()):
        problems.append(f"all {len(upstreams)} routing keys reached one replica ({sorted(used)})")
    if not_found_lines:
        problems.append(f"{len(not_found_lines)} calls answered NOT_FOUND at the proxy, e.g. "
                        f"{not_found_lines[0]}")
    created = 0
    for r in replicas:
        not_found = r.delta("flashkv_rpc_requests_total", code="NOT_FOUND")
        if not_found:
            problems.append(f"replica {r.address} answered NOT_FOUND {not_found:.0f} times")
        left = r.delta("flashkv_sequences")
        if left:
            problems.append(f"replica {r.address} holds {left:.0f} more sequences than before")
        created += r.delta("flashkv_rpc_requests_total", rpc="CreateSequence", code="OK")
    if created != report["requests"]["started"]:
        problems.append(f"replicas created {created:.0f} sequences, the load test started "
                        f"{report['requests']['started']}")
    return problems


def print_summary(report, replicas, upstreams):
    keys = collections.Counter(next(iter(w)) for w in upstreams.values() if len(w) == 1)
    print(f"{'replica':<22}{'keys':>6}{'created':>9}{'steps':>9}{'not found':>11}")
    for r in replicas:
        steps = r.delta("flashkv_rpc_requests_total", rpc="StepStream") + r.delta(
            "flashkv_rpc_requests_total", rpc="Step")
        print(f"{r.address:<22}{keys[r.address]:>6}"
              f"{r.delta('flashkv_rpc_requests_total', rpc='CreateSequence', code='OK'):>9.0f}"
              f"{steps:>9.0f}"
              f"{r.delta('flashkv_rpc_requests_total', code='NOT_FOUND'):>11.0f}")
    v = report["verification"]
    print(f"load test: {report['requests']['started']} sequences started, "
          f"{report['requests']['completed']} completed, {v['steps_checked']} steps and "
          f"{v['entries_checked']} entries verified, {v['mismatched_entries']} mismatched, "
          f"unexpected errors: {report['errors']['unexpected'] or 'none'}")


def verify(args):
    with open(args.report) as f:
        report = json.load(f)
    replicas = [Replica(*r) for r in args.replica]
    upstreams, kv_calls, not_found_lines = read_routing_log(args.access_log)
    print_summary(report, replicas, upstreams)
    routing = check_routing(report, replicas, upstreams, kv_calls, not_found_lines)
    if args.expect_misrouting:
        if not routing:
            print("FAIL: the hash rule was removed, yet no misrouting was detected")
            return 1
        print("misrouting detected, as expected without the hash rule:")
        for p in routing:
            print(f"  {p}")
        return 0
    problems = check_report(report) + routing
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        print(f"routing: {len(upstreams)} routing keys, each on exactly one of "
              f"{len(replicas)} replicas; no NOT_FOUND; every sequence freed where it lived")
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scrape")
    s.add_argument("url")
    s.add_argument("file")
    v = sub.add_parser("verify")
    v.add_argument("--report", required=True)
    v.add_argument("--access-log", required=True)
    v.add_argument("--replica", nargs=3, action="append", required=True,
                   metavar=("ADDRESS", "METRICS_BEFORE", "METRICS_AFTER"))
    v.add_argument("--expect-misrouting", action="store_true")
    args = parser.parse_args()
    if args.command == "scrape":
        scrape(args.url, args.file)
        return 0
    return verify(args)


if __name__ == "__main__":
    sys.exit(main())
