"""Generate the Python stubs of ``proto/callward/v1/*.proto``: the one way stubs are made.

The generator is pinned (:data:`GRPCIO_TOOLS_VERSION`) because its output embeds the
protobuf and gRPC versions it came from; the checked-in stubs are compared against a
fresh run by ``tests/enforcer/test_stubs.py``. Run it from anywhere::

    python proto/generate.py            # rewrite the checked-in stubs
    python proto/generate.py --out DIR  # write them somewhere else

protoc writes absolute imports (``from callward.v1 import enforcer_pb2``), which only
work with ``proto/`` on ``sys.path``; they are rewritten to relative imports so that
``from proto.callward.v1 import enforcer_pb2_grpc`` works from the repository root.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata, resources
from pathlib import Path

GRPCIO_TOOLS_VERSION = "1.81.1"
PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("callward/v1/enforcer.proto",)

_ABSOLUTE_IMPORT = re.compile(r"^from callward\.v1 import (\w+_pb2)", re.MULTILINE)


class GeneratorVersionMismatch(RuntimeError):
    """The installed grpcio-tools is not the pinned one, so the output would differ."""


def installed_version() -> str:
    return metadata.version("grpcio-tools")


def generate(
    out_dir: Path, *, proto_root: Path = PROTO_ROOT, check_version: bool = True
) -> list[Path]:
    """Run protoc on every file of :data:`PROTO_FILES` under ``proto_root`` into ``out_dir``;
    return the files written."""
    if check_version and installed_version() != GRPCIO_TOOLS_VERSION:
        raise GeneratorVersionMismatch(
            f"grpcio-tools {installed_version()} is installed; the stubs are generated with "
            f"grpcio-tools=={GRPCIO_TOOLS_VERSION} (pip install grpcio-tools=={GRPCIO_TOOLS_VERSION})"
        )
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    written: list[Path] = []
    for proto in PROTO_FILES:
        stem = out_dir / proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = stem.with_name(stem.name + suffix)
            text = path.read_text(encoding="utf-8")
            path.write_text(_ABSOLUTE_IMPORT.sub(r"from . import \1", text), encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=PROTO_ROOT, help="output root (default: proto/)"
    )
    args = parser.parse_args(argv)
    try:
        files = generate(args.out)
    except GeneratorVersionMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
