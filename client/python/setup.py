"""Builds the flashkv package with its protobuf/gRPC modules generated from ../../proto.

Everything static is in pyproject.toml; this file only hooks generate_protos.py into build_py,
so a wheel (and `pip install client/python`) carries modules made by the protoc found at build
time. The proto files are read from the repository (this directory must stay inside it).
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_protos  # noqa: E402


class BuildWithProtos(build_py):
    def run(self):
        super().run()
        if not self.dry_run:
            try:
                generate_protos.generate(os.path.join(self.build_lib, "flashkv"))
            except generate_protos.GenerateError as e:
                sys.exit(f"flashkv: {e}")


setup(cmdclass={"build_py": BuildWithProtos})
