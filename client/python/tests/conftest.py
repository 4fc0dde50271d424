"""Fixtures of the Python client tests: real flashkv-server processes on 127.0.0.1 (CPU backend,
port 0, the bound port read from the server's "serving on" log line), and in-test fake servers
for what a real server cannot show (metadata it received, stalls, contract violations).

Run by ctest (tests/python/CMakeLists.txt) as
  /usr/bin/python3 -m pytest client/python/tests --server-binary build/server/flashkv-server
with PYTHONPATH naming the package copy CMake generated. Without python3-grpcio the run exits
77, which ctest reports as skipped; everything else that is missing is a failure.
"""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

try:
    import grpc  # noqa: F401
    import google.protobuf  # noqa: F401
except ImportError as e:  # pragma: no cover - CI installs python3-grpcio (scripts/setup.sh)
    pytest.exit(f"skipped: python3-grpcio / python3-protobuf unavailable ({e})", returncode=77)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
TESTDATA = os.path.join(REPO, "tests", "client", "testdata")  # test-only TLS material


def pytest_addoption(parser):
    parser.addoption("--server-binary", default=os.path.join(REPO, "build", "server",
                                                             "flashkv-server"),
                     help="the flashkv-server executable to test against")


@pytest.fixture(scope="session")
def server_binary(request):
    path = request.config.getoption("--server-binary")
    if not os.access(path, os.X_OK):
        pytest.fail(f"flashkv-server not found at {path}: pass --server-binary")
    return path


class ServerProcess:
    """One flashkv-server; killed (SIGKILL) at the end if still running."""

    def __init__(self, binary, **flags):
        defaults = dict(backend="cpu", listen="127.0.0.1:0", metrics_address="off", layers=2,
                        q_heads=4, kv_heads=2, head_dim=64, dtype="fp16", page_size=4,
                        kv_cache_bytes="16MiB", cpu_threads=1, attention_threads=1,
                        log_level="info")
        defaults.update(flags)
        self.flags = defaults
        # Loopback tests: plaintext, which the server serves only when asked for.
        args = [binary, "--plaintext"] + [f"--{k.replace('_', '-')}={v}"
                                          for k, v in defaults.items()]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.log = []
        self._listening = threading.Event()
        self.target = None
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._listening.wait(30) or self.target is None:
            self.stop()
            raise RuntimeError("flashkv-server did not start:\n" + "".join(self.log))

    def _drain(self):
        # Reads the log to the end, so the server never blocks on a full pipe.
        for line in self.process.stdout:
            self.log.append(line)
            m = re.search(r"serving on (\S+)", line)
            if m and self.target is None:
                self.target = m.group(1)
                self._listening.set()
        self._listening.set()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def start_server(server_binary):
    """start_server(**flags) -> ServerProcess; every server ends with the session."""
    servers = []

    def start(**flags):
        server = ServerProcess(server_binary, **flags)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def fp16_server(start_server):
    return start_server()


@pytest.fixture()
def client(fp16_server):
    import flashkv
    with flashkv.Client(fp16_server.target, default_timeout=30) as c:
        c.wait_for_serving(30)
        yield c


def unique(prefix="seq"):
    """A sequence id no other test uses."""
    unique.counter += 1
    return f"{prefix}-{os.getpid()}-{unique.counter}-{time.monotonic_ns()}"


unique.counter = 0
sys.path.insert(0, HERE)  # helpers.py
