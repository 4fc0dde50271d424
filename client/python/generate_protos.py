#!/usr/bin/env python3
"""Generates the protobuf and gRPC modules of the flashkv Python package from the .proto files.

The generated code is not committed: it must match the protoc that pairs with the installed
python3-protobuf (Debian's protoc 3.21 with protobuf 4.21), so it is made where it is used:

  python3 client/python/generate_protos.py            # in place, for `import flashkv` from
                                                       # client/python (the one setup step)
  python3 client/python/generate_protos.py --package-out DIR
                                                       # copies the package to DIR/flashkv and
                                                       # generates there (CMake does this)

setup.py runs the same code while building a wheel (`pip install client/python`).

Output, inside the package:
  flashkv/v1/{tensor,attention,kvcache}_pb2.py, *_pb2_grpc.py   from proto/flashkv/v1/*.proto
  flashkv/_health_pb2.py                                       from grpc/health/v1/health.proto

The flashkv.v1 modules land where their proto package says (`flashkv/v1/`), so the imports the
generator writes (`from flashkv.v1 import tensor_pb2`) resolve inside this package. The health
messages import nothing, so they live under a private name, leaving the `grpc` package alone; the
proto file name registered with protobuf stays "grpc/health/v1/health.proto", so loading
grpcio-health-checking beside flashkv registers the same file twice, which protobuf accepts.

Tools: `protoc` with Debian's `grpc_python_plugin` (packages protobuf-compiler and
protobuf-compiler-grpc), or the `grpc_tools` module (pip's grpcio-tools) when those are absent.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "flashkv"
FLASHKV_PROTOS = ["flashkv/v1/tensor.proto", "flashkv/v1/attention.proto",
                  "flashkv/v1/kvcache.proto", "flashkv/v1/region.proto"]
HEALTH_PROTO = "grpc/health/v1/health.proto"
HEALTH_SEARCH = ["/usr/share/grpc-proto", "/usr/include", "/usr/local/include"]


class GenerateError(RuntimeError):
    pass


def default_proto_dir():
    return os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def find_health_dir(extra=None):
    for d in ([extra] if extra else []) + HEALTH_SEARCH:
        if d and os.path.isfile(os.path.join(d, HEALTH_PROTO)):
            return d
    try:  # grpc_tools ships the well-known and health protos
        import grpc_tools  # noqa: F401  (only its location)
        d = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        if os.path.isfile(os.path.join(d, HEALTH_PROTO)):
            return d
    except ImportError:
        pass
    raise GenerateError(f"{HEALTH_PROTO} not found in {HEALTH_SEARCH}: install Debian's grpc-proto "
                        "(scripts/setup.sh) or pass --health-proto-dir")


def protoc_command(protoc=None, plugin=None):
    """The protoc invocation prefix: [protoc, --plugin=...] or [python, -m, grpc_tools.protoc]."""
    protoc = protoc or shutil.which("protoc")
    plugin = plugin or shutil.which("grpc_python_plugin")
    if protoc and plugin:
        return [protoc, f"--plugin=protoc-gen-grpc_python={plugin}"]
    try:
        import grpc_tools.protoc  # noqa: F401
        return [sys.executable, "-m", "grpc_tools.protoc"]
    except ImportError:
        pass
    missing = " and ".join(n for n, p in (("protoc", protoc), ("grpc_python_plugin", plugin))
                           if not p)
    raise GenerateError(f"{missing} not found: install protobuf-compiler and "
                        "protobuf-compiler-grpc (scripts/setup.sh), or pip's grpcio-tools")


def _run(cmd):
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise GenerateError(f"{' '.join(cmd)} failed:\n{result.stdout}")


def generate(package_dir, proto_dir=None, health_dir=None, protoc=None, plugin=None):
    """Writes the generated modules into `package_dir` (the directory of flashkv/__init__.py)."""
    proto_dir = proto_dir or default_proto_dir()
    for rel in FLASHKV_PROTOS:
        if not os.path.isfile(os.path.join(proto_dir, rel)):
            raise GenerateError(f"{rel} not found under {proto_dir} (pass --proto-dir)")
    health_dir = find_health_dir(health_dir)
    cmd = protoc_command(protoc, plugin)
    with tempfile.TemporaryDirectory() as out:
        _run(cmd + [f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}"]
             + [os.path.join(proto_dir, rel) for rel in FLASHKV_PROTOS])
        _run(cmd + [f"-I{health_dir}", f"--python_out={out}",
                    os.path.join(health_dir, HEALTH_PROTO)])
        v1_out = os.path.join(package_dir, "v1")
        os.makedirs(v1_out, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(out, "flashkv", "v1"))):
            _replace(os.path.join(out, "flashkv", "v1", name), os.path.join(v1_out, name))
        _replace(os.path.join(out, "grpc", "health", "v1", "health_pb2.py"),
                 os.path.join(package_dir, "_health_pb2.py"))


def _replace(src, dst):
    # Through a temporary name, so a concurrent import never sees half a module.
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def copy_package(dest_root):
    """Copies the package's own sources (no generated or cached files) to dest_root/flashkv."""
    src = os.path.join(HERE, PACKAGE)
    dst = os.path.join(dest_root, PACKAGE)
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for f in files:
            if f.endswith(".py") and not f.endswith(("_pb2.py", "_pb2_grpc.py")):
                _replace(os.path.join(root, f), os.path.join(dst, rel, f))
    return dst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package-out", metavar="DIR",
                        help="copy the package to DIR/flashkv and generate there "
                             "(default: generate in place, in client/python/flashkv)")
    parser.add_argument("--proto-dir", help="root of flashkv/v1/*.proto (default: the repo's "
                                            "proto/)")
    parser.add_argument("--health-proto-dir", help=f"root of {HEALTH_PROTO}")
    parser.add_argument("--protoc", help="protoc executable")
    parser.add_argument("--grpc-python-plugin", help="grpc_python_plugin executable")
    args = parser.parse_args(argv)
    try:
        package_dir = (copy_package(args.package_out) if args.package_out
                       else os.path.join(HERE, PACKAGE))
        generate(package_dir, args.proto_dir, args.health_proto_dir, args.protoc,
                 args.grpc_python_plugin)
    except GenerateError as e:
        print(f"generate_protos: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
