"""`python3 -m flashkv` as a user runs it (exit codes, JSON), and the worked example
(examples/tiny_transformer.py) against real servers, including proof that its check can fail."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HERE
from fake_server import FakeServer

EXAMPLES = os.path.join(HERE, "..", "examples")
sys.path.insert(0, EXAMPLES)
import tiny_transformer  # noqa: E402


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "flashkv", *args], capture_output=True,
                            text=True, timeout=120)
    return result.returncode, result.stdout, result.stderr


def test_cli_health_info_stats_attention(fp16_server):
    t = ["--target", fp16_server.target]
    assert cli(*t, "health", "--wait", "30")[0] == 0
    rc, out, _ = cli(*t, "--json", "info")
    assert rc == 0
    info = json.loads(out)
    assert (info["num_q_heads"], info["num_kv_heads"], info["head_dim"]) == (4, 2, 64)
    rc, out, _ = cli(*t, "--json", "stats")
    assert rc == 0 and "blocks_total" in json.loads(out)
    for dtype in ("fp16", "bf16", "fp32"):
        rc, out, err = cli(*t, "--json", "attention", "--dtype", dtype, "--head-dim", "64",
                           "--heads-q", "4", "--heads-kv", "2", "--seqlen-q", "3",
                           "--seqlen-kv", "7", "--causal")
        assert rc == 0, err
        assert json.loads(out)["mismatched_elements"] == 0
    assert cli(*t, "health", "--service", "no.such.Service")[0] == 3


def test_cli_failures_and_exit_codes():
    rc, out, err = cli("--target", "unix:/nonexistent/flashkv.sock", "--timeout", "5", "--json",
                       "info")
    assert rc == 1 and json.loads(out)["error"]["code"] == "UNAVAILABLE"
    assert "UNAVAILABLE" in err
    assert cli("--bogus-flag", "info")[0] == 2
    assert cli("--tls", "--tls-ca", "/nonexistent.pem", "info")[0] == 2
    fake = FakeServer()  # answers attention with out = q: the check must catch it
    try:
        rc, out, _ = cli("--target", fake.target, "--json", "attention", "--head-dim", "64")
        assert rc == 4 and json.loads(out)["mismatched_elements"] > 0
    finally:
        fake.stop()


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_tiny_transformer_example(start_server, dtype, capsys):
    server = start_server(dtype=dtype, layers=3, q_heads=8, kv_heads=2)
    assert tiny_transformer.main(["--target", server.target, "--numpy"]) == 0
    assert "0 beyond tolerance" in capsys.readouterr().out


def test_tiny_transformer_example_with_torch(start_server):
    pytest.importorskip("torch")
    server = start_server(dtype="bf16", layers=2, q_heads=8, kv_heads=2)
    assert tiny_transformer.main(["--target", server.target]) == 0


def test_tiny_transformer_check_catches_a_wrong_output():
    checker = tiny_transformer.Checker("fp16")
    rng = np.random.default_rng(3)
    k, v = rng.uniform(-1, 1, (5, 2, 64)).astype(np.float16), \
        rng.uniform(-1, 1, (5, 2, 64)).astype(np.float16)
    q = rng.uniform(-1, 1, (2, 4, 64)).astype(np.float16)
    checker.append("s", 0, k, v)
    from flashkv import reference
    good = reference.attention(q, k, v, causal=True)[0].astype(np.float16)
    checker.check("s", 0, q, good, "good")
    assert checker.bad == 0
    wrong = good.copy()
    wrong[1, 3, 7] += np.float16(0.05)
    checker.check("s", 0, q, wrong, "perturbed")
    assert checker.bad == 1
