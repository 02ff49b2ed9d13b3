"""The checked-in gRPC stubs match what proto/generate.py makes from the .proto files."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from callward.proto import generate as gen

STUB_DIR = gen.PROTO_ROOT / "callward" / "v1"
STUBS = ("enforcer_pb2.py", "enforcer_pb2.pyi", "enforcer_pb2_grpc.py")
_SERIALIZED = re.compile(r"AddSerializedFile\((b'.*?')\)", re.DOTALL)


def descriptor_of(pb2_file: Path) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto embedded in a generated ``_pb2.py``, without importing it."""
    match = _SERIALIZED.search(pb2_file.read_text(encoding="utf-8"))
    assert match is not None, f"{pb2_file} has no serialized descriptor"
    fd = descriptor_pb2.FileDescriptorProto()
    fd.ParseFromString(ast.literal_eval(match.group(1)))
    return fd


def regenerate(tmp_path: Path, proto_root: Path = gen.PROTO_ROOT) -> Path:
    out = tmp_path / "out"
    gen.generate(out, proto_root=proto_root, check_version=False)
    return out / "callward" / "v1"


@pytest.mark.timeout(60)
def test_checked_in_descriptor_matches_the_proto(tmp_path: Path) -> None:
    fresh = regenerate(tmp_path)
    assert descriptor_of(fresh / "enforcer_pb2.py") == descriptor_of(
        STUB_DIR / "enforcer_pb2.py"
    ), "proto/callward/v1 stubs are stale: run `python proto/generate.py`"


@pytest.mark.timeout(60)
def test_checked_in_stubs_are_byte_identical_to_a_fresh_run(tmp_path: Path) -> None:
    if gen.installed_version() != gen.GRPCIO_TOOLS_VERSION:
        pytest.skip(
            f"grpcio-tools {gen.installed_version()} installed, stubs pinned to "
            f"{gen.GRPCIO_TOOLS_VERSION}; the descriptor comparison still runs"
        )
    fresh = regenerate(tmp_path)
    for name in STUBS:
        assert (fresh / name).read_text() == (STUB_DIR / name).read_text(), (
            f"{name} is stale: run `python proto/generate.py`"
        )


@pytest.mark.timeout(60)
def test_a_changed_proto_is_detected_as_stale(tmp_path: Path) -> None:
    root = tmp_path / "protos"
    shutil.copytree(gen.PROTO_ROOT / "callward", root / "callward")
    proto = root / "callward" / "v1" / "enforcer.proto"
    text = proto.read_text()
    proto.write_text(text.replace("string mcp_session_id = 9;", "string mcp_session_id = 10;"))
    fresh = regenerate(tmp_path, proto_root=root)
    assert descriptor_of(fresh / "enforcer_pb2.py") != descriptor_of(STUB_DIR / "enforcer_pb2.py")


def test_grpc_stub_imports_its_messages_relatively() -> None:
    text = (STUB_DIR / "enforcer_pb2_grpc.py").read_text()
    assert "from callward.v1 import" not in text
    assert "from . import enforcer_pb2" in text
    from callward.proto.callward.v1 import enforcer_pb2, enforcer_pb2_grpc

    assert enforcer_pb2.DESCRIPTOR.package == "callward.v1"
    assert hasattr(enforcer_pb2_grpc, "EnforcerStub")


def test_generator_refuses_another_grpcio_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(gen, "installed_version", lambda: "0.0.1")
    with pytest.raises(gen.GeneratorVersionMismatch, match=gen.GRPCIO_TOOLS_VERSION):
        gen.generate(tmp_path)
    assert not (tmp_path / "callward").exists()
