#!/usr/bin/env python3
"""The deployment files agree with the server and with each other.

  manifests_test.py --repo DIR --server FLASHKV_SERVER [unittest arguments]

Ports, the drain deadline and the health service come from the server itself (its --help
defaults and the flags each file passes), so a changed default or a typo in one file fails here:
the Dockerfile's ports, health check and PID 1; compose's ports, health checks, stop grace, GPU
reservation, load test and Prometheus target; every Kubernetes manifest's ports, probes,
resources, termination grace, selectors; the routing header in nginx's rule, the Ingress
annotation and the client library. Needs PyYAML (Debian: python3-yaml).
"""

import argparse
import pathlib
import re
import subprocess
import sys
import unittest

try:
    import yaml
except ImportError:  # a missing dependency fails the test, it never skips it
    sys.exit("manifests_test: PyYAML is missing (scripts/setup.sh installs python3-yaml)")

ARGS = None
HEADER = "x-flashkv-sequence"
NGINX_VARIABLE = "$http_" + HEADER.replace("-", "_")


def duration_seconds(text):
    """'30s', '1m30s', '250ms', '45' (compose/k8s seconds) -> seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def flag_values(args):
    """['--listen=a', '--x', 'b'] -> {'--listen': 'a', '--x': 'b'} (flags with values only)."""
    values = {}
    args = [str(a) for a in args]
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            name, value = arg.split("=", 1)
            values[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            values[arg] = args[i + 1]
    return values


class ServerDefaults:
    """The defaults flashkv-server prints in --help."""

    def __init__(self, server):
        text = subprocess.run([server, "--help"], check=True, capture_output=True,
                              text=True).stdout
        self.listen = self._default(text, "--listen")
        self.metrics = self._default(text, "--metrics-address")
        self.drain = duration_seconds(self._default(text, "--drain-deadline"))

    @staticmethod
    def _default(text, flag):
        # CLI11 prints "--flag TYPE=VALUE help" (capture_default_str) or "... [default: VALUE]".
        for line in text.splitlines():
            if re.match(rf"\s*{re.escape(flag)}\b", line):
                m = (re.search(r"\[default: ([^\]]+)\]\s*$", line) or
                     re.match(rf"\s*{re.escape(flag)}\s+[A-Z]+=(\S+)", line))
                if m:
                    return m.group(1)
        raise AssertionError(f"flashkv-server --help shows no default for {flag}")


class ServerFlags:
    """What one server invocation listens on and how long it drains."""

    def __init__(self, args, defaults):
        values = flag_values(args)
        self.grpc_port = port_of(values.get("--listen", defaults.listen))
        self.metrics_port = port_of(values.get("--metrics-address", defaults.metrics))
        self.drain = duration_seconds(values.get("--drain-deadline", f"{defaults.drain}s"))


def load_yaml(path):
    with open(path) as f:
        return list(yaml.safe_load_all(f))


DEFAULTS = None


class DeployTest(unittest.TestCase):
    """Base of the suites below: the repository's paths and the server's defaults."""

    @classmethod
    def setUpClass(cls):
        global DEFAULTS
        cls.repo = pathlib.Path(ARGS.repo)
        cls.docker = cls.repo / "docker"
        DEFAULTS = DEFAULTS or ServerDefaults(ARGS.server)
        cls.defaults = DEFAULTS


class ServerDefaultsTest(DeployTest):
    def test_server_defaults_are_the_documented_ports(self):
        # docs/operations.md and every file below rely on these; change them all together.
        self.assertEqual(port_of(self.defaults.listen), 50051)
        self.assertEqual(port_of(self.defaults.metrics), 9464)
        self.assertGreater(self.defaults.drain, 0)


class DockerfileTest(DeployTest):
    def setUp(self):
        self.text = (self.docker / "Dockerfile").read_text()
        self.lines = [l.strip() for l in self.text.replace("\\\n", " ").splitlines()]
        stages = re.split(r"(?m)^FROM ", self.text)
        self.assertEqual(len(stages), 3, "one build stage and one runtime stage")
        self.build, self.runtime = stages[1], stages[2]

    def directive(self, stage, name):
        found = re.findall(rf"(?m)^{name}\s+((?:[^\n]*\\\n)*[^\n]*)", stage)
        return [f.replace("\\\n", " ") for f in found]

    def test_bases_are_build_args(self):
        self.assertIn("ARG BASE_IMAGE=debian:bookworm-slim", self.lines)
        self.assertIn("ARG RUNTIME_BASE_IMAGE=${BASE_IMAGE}", self.lines)
        self.assertTrue(self.build.startswith("${BASE_IMAGE} AS build"))
        self.assertTrue(self.runtime.startswith("${RUNTIME_BASE_IMAGE} AS runtime"))

    def test_build_stage_uses_setup_and_runs_cpu_tests_on_request(self):
        self.assertIn("scripts/setup.sh", self.build)
        for arg in ("RUN_TESTS=1", "CMAKE_CUDA_ARCHITECTURES=", "FLASHKV_WITH_CUDA="):
            self.assertTrue(any(l.startswith(f"ARG {arg}") for l in self.lines), arg)
        stage_script = (self.docker / "build-stage.sh").read_text()
        self.assertIn("ctest --test-dir \"$build\" -L cpu", stage_script)

    def test_runtime_stage(self):
        user = self.directive(self.runtime, "USER")
        self.assertEqual(len(user), 1)
        self.assertNotIn(user[0].split(":")[0].strip(), ("0", "root"))
        entrypoint = self.directive(self.runtime, "ENTRYPOINT")
        self.assertEqual(entrypoint, ['["/usr/bin/tini", "--"]'], "tini as PID 1")
        self.assertIn("tini", self.runtime)
        self.assertEqual(self.directive(self.runtime, "STOPSIGNAL"), ["SIGTERM"])
        self.assertNotIn("cmake", self.runtime.lower(), "no toolchain in the runtime stage")
        exposed = {int(p) for p in " ".join(self.directive(self.runtime, "EXPOSE")).split()}
        cmd = self.directive(self.runtime, "CMD")[-1]
        flags = ServerFlags(yaml.safe_load(cmd), self.defaults)
        self.assertEqual(exposed, {flags.grpc_port, flags.metrics_port})

    def test_healthcheck_asks_the_grpc_health_service_on_the_served_port(self):
        health = self.directive(self.runtime, "HEALTHCHECK")
        self.assertEqual(len(health), 1)
        command = yaml.safe_load(re.split(r"\s+CMD\s+", health[0], maxsplit=1)[1])
        self.assertEqual(command[0], "/opt/flashkv/bin/flashkv")
        self.assertEqual(command[-1], "health")
        cmd = self.directive(self.runtime, "CMD")[-1]
        flags = ServerFlags(yaml.safe_load(cmd), self.defaults)
        self.assertEqual(port_of(flag_values(command)["--target"]), flags.grpc_port)

    def test_dockerignore_keeps_build_trees_out(self):
        ignored = (self.repo / ".dockerignore").read_text().split()
        for entry in ("build", ".git"):
            self.assertIn(entry, ignored)


class ComposeTest(DeployTest):
    def setUp(self):
        (self.compose,) = load_yaml(self.docker / "compose.yaml")
        self.services = self.compose["services"]

    def servers(self):
        return {n: s for n, s in self.services.items() if s["command"][0] == "flashkv-server"}

    def test_server_per_profile_with_gpu_only_for_cuda(self):
        servers = self.servers()
        self.assertEqual({p for s in servers.values() for p in s["profiles"]}, {"cpu", "cuda"})
        for name, s in servers.items():
            devices = (s.get("deploy", {}).get("resources", {}).get("reservations", {})
                       .get("devices", []))
            backend = flag_values(s["command"])["--backend"]
            if "cuda" in s["profiles"]:
                self.assertEqual(backend, "cuda", name)
                self.assertTrue(any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"]
                                    for d in devices), f"{name}: GPU reservation")
            else:
                self.assertEqual(backend, "cpu", name)
                self.assertEqual(devices, [], name)

    def test_servers_ports_health_and_grace(self):
        for name, s in self.servers().items():
            flags = ServerFlags(s["command"], self.defaults)
            published = {int(str(p).rsplit(":", 1)[1]) for p in s["ports"]}
            self.assertEqual(published, {flags.grpc_port, flags.metrics_port}, name)
            test = s["healthcheck"]["test"]
            self.assertEqual(test[-1], "health", name)
            self.assertEqual(port_of(flag_values(test)["--target"]), flags.grpc_port, name)
            self.assertGreater(duration_seconds(s["stop_grace_period"]), flags.drain, name)
            self.assertEqual(s.get("stop_signal", "SIGTERM"), "SIGTERM", name)
            self.assertIn("flashkv", s["networks"]["default"]["aliases"], name)

    def test_load_test_verifies_against_the_server(self):
        loadgen = self.services["loadgen"]
        self.assertEqual(loadgen["command"][0], "flashkv-loadgen")
        flags = flag_values(loadgen["command"])
        self.assertNotEqual(flags.get("--verify", "none"), "none")
        self.assertGreater(float(flags["--duration"]), 0)
        host, port = flags["--target"].rsplit(":", 1)
        self.assertEqual(host, "flashkv")
        for name, s in self.servers().items():
            self.assertEqual(int(port), ServerFlags(s["command"], self.defaults).grpc_port)
            self.assertEqual(loadgen["depends_on"][name]["condition"], "service_healthy")
        self.assertEqual(set(loadgen["profiles"]), {"cpu", "cuda"})

    def test_prometheus_scrapes_the_metrics_port(self):
        prometheus = self.services["prometheus"]
        self.assertIn("./prometheus.yml:/etc/prometheus/prometheus.yml:ro", prometheus["volumes"])
        (config,) = load_yaml(self.docker / "prometheus.yml")
        targets = [t for job in config["scrape_configs"] for sc in job["static_configs"]
                   for t in sc["targets"]]
        self.assertTrue(targets)
        for name, s in self.servers().items():
            port = ServerFlags(s["command"], self.defaults).metrics_port
            self.assertIn(f"flashkv:{port}", targets, name)


class KubernetesTest(DeployTest):
    def setUp(self):
        self.k8s = self.docker / "k8s"
        self.objects = {}
        for path in sorted(self.k8s.glob("*.yaml")):
            for doc in load_yaml(path):
                self.objects.setdefault(doc["kind"], []).append(doc)
        self.deployment = self.only("Deployment")
        self.pod = self.deployment["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]
        self.flags = ServerFlags(self.container["args"], self.defaults)

    def only(self, kind):
        self.assertEqual(len(self.objects.get(kind, [])), 1, kind)
        return self.objects[kind][0]

    def container_port(self, name):
        for port in self.container["ports"]:
            if port["name"] == name:
                return port["containerPort"]
        self.fail(f"container port {name!r} missing")

    def test_kustomization_lists_every_manifest(self):
        kustomization = self.only("Kustomization")
        files = {p.name for p in self.k8s.glob("*.yaml")} - {"kustomization.yaml"}
        self.assertEqual(set(kustomization["resources"]), files)

    def test_deployment_ports_and_labels(self):
        self.assertEqual(self.container["args"][0], "flashkv-server")
        self.assertEqual(self.container_port("grpc"), self.flags.grpc_port)
        self.assertEqual(self.container_port("metrics"), self.flags.metrics_port)
        labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        selector = self.deployment["spec"]["selector"]["matchLabels"]
        self.assertLessEqual(selector.items(), labels.items())
        annotations = self.deployment["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(int(annotations["prometheus.io/port"]), self.flags.metrics_port)

    def test_probes_use_the_grpc_health_service(self):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = self.container[probe]
            self.assertEqual(spec["grpc"]["port"], self.flags.grpc_port, probe)
            self.assertEqual(spec["grpc"].get("service", ""), "", probe)

    def test_resources_reserve_a_gpu_and_bound_memory(self):
        resources = self.container["resources"]
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory", "nvidia.com/gpu"):
                self.assertIn(resource, resources[section], f"{section}.{resource}")
        self.assertEqual(resources["limits"]["nvidia.com/gpu"],
                         resources["requests"]["nvidia.com/gpu"])
        self.assertEqual(flag_values(self.container["args"])["--backend"], "cuda")

    def test_termination_grace_outlasts_pre_stop_and_drain(self):
        pre_stop = self.container.get("lifecycle", {}).get("preStop", {})
        sleep = 0.0
        if "exec" in pre_stop:
            command = pre_stop["exec"]["command"]
            self.assertEqual(command[0], "sleep")
            sleep = duration_seconds(command[1])
        grace = self.pod["terminationGracePeriodSeconds"]
        self.assertGreater(grace, sleep + self.flags.drain)

    def test_runs_unprivileged(self):
        self.assertTrue(self.pod["securityContext"]["runAsNonRoot"])
        self.assertFalse(self.container["securityContext"]["allowPrivilegeEscalation"])

    def test_headless_service_selects_the_pods(self):
        service = self.only("Service")
        self.assertEqual(service["spec"]["clusterIP"], "None")
        labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        self.assertLessEqual(service["spec"]["selector"].items(), labels.items())
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        for name in ("grpc", "metrics"):
            target = ports[name]["targetPort"]
            self.assertIn(target, (name, self.container_port(name)))

    def test_disruption_budget_lets_one_replica_go(self):
        pdb = self.only("PodDisruptionBudget")
        labels = self.deployment["spec"]["template"]["metadata"]["labels"]
        self.assertLessEqual(pdb["spec"]["selector"]["matchLabels"].items(), labels.items())
        replicas = self.deployment["spec"]["replicas"]
        if "maxUnavailable" in pdb["spec"]:
            self.assertGreaterEqual(pdb["spec"]["maxUnavailable"], 1)
        else:
            self.assertLess(pdb["spec"]["minAvailable"], replicas)

    def test_ingress_hashes_on_the_sequence_header(self):
        ingress = self.only("Ingress")
        annotations = ingress["metadata"]["annotations"]
        self.assertEqual(annotations["nginx.ingress.kubernetes.io/backend-protocol"], "GRPC")
        self.assertEqual(annotations["nginx.ingress.kubernetes.io/upstream-hash-by"],
                         NGINX_VARIABLE)
        service = self.only("Service")
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                self.assertEqual(backend["name"], service["metadata"]["name"])
                self.assertEqual(backend["port"].get("name"), "grpc")


class NginxTest(DeployTest):
    def setUp(self):
        text = (self.docker / "nginx" / "flashkv.conf").read_text()
        self.conf = re.sub(r"#.*", "", text)

    def block(self, header):
        m = re.search(rf"{header}\s*\{{([^{{}}]*)\}}", self.conf)
        self.assertIsNotNone(m, header)
        return m.group(1)

    def test_client_sends_the_header_nginx_hashes_on(self):
        client_h = (self.repo / "client/include/flashkv/client/client.h").read_text()
        self.assertIn(f'kSequenceHeader[] = "{HEADER}"', client_h)

    def test_sequence_calls_hash_consistently_on_the_header(self):
        location = self.block(r"location /flashkv\.v1\.KvCacheService/")
        upstream = re.search(r"grpc_pass grpc://(\w+);", location).group(1)
        rules = self.block(rf"upstream {upstream}")
        self.assertRegex(rules, rf"(?m)^\s*hash {re.escape(NGINX_VARIABLE)} consistent;")

    def test_large_messages_and_long_streams_pass(self):
        self.assertRegex(self.conf, r"client_max_body_size 0;")
        timeout = re.search(r"grpc_read_timeout (\S+);", self.conf).group(1)
        self.assertGreaterEqual(duration_seconds(timeout), 3600)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--server", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
