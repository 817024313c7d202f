"""The committed Hubble API stubs (bng_operator/_hubble) are the pinned Cilium release's.

hack/hubble/protos.sh generates them from the .proto files of the release in
hack/hubble/VERSION, the same release whose hubble CLI hack/hubble/build.sh builds, and keeps
those .proto files in hack/hubble/api/v1. The descriptors embedded in the stubs are compared
with the ones protoc makes from them, so a stub edited by hand or left behind fails here.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

from bng_operator import _hubble

HACK = Path(__file__).resolve().parents[2] / "hack" / "hubble"
VERSION = (HACK / "VERSION").read_text().strip()


def _stub(proto: str) -> ModuleType:
    """flow/flow.proto -> bng_operator._hubble.flow.flow_pb2."""
    module = proto.removesuffix(".proto").replace("/", ".")
    return importlib.import_module(f"bng_operator._hubble.{module}_pb2")


def _drop_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """protoc's descriptor sets name each field's JSON form; the Python generator drops it."""
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _drop_json_names(m.nested_type)


def test_stubs_are_of_the_pinned_release() -> None:
    assert _hubble.CILIUM_VERSION == VERSION


def test_stubs_import_under_the_package() -> None:
    from bng_operator._hubble.flow import flow_pb2
    from bng_operator._hubble.observer import observer_pb2, observer_pb2_grpc
    from bng_operator._hubble.peer import peer_pb2_grpc

    # observer.proto's `import public "flow/flow.proto"` re-exports flow's messages.
    assert observer_pb2.Flow is flow_pb2.Flow
    flow = observer_pb2.GetFlowsResponse.DESCRIPTOR.fields_by_name["flow"]
    assert flow.message_type.full_name == "flow.Flow"
    assert observer_pb2_grpc.ObserverServicer.GetFlows
    assert peer_pb2_grpc.PeerServicer.Notify
    # Cilium's file and service names, as every other Hubble client expects them.
    assert [_stub(p).DESCRIPTOR.name for p in _hubble.PROTOS] == list(_hubble.PROTOS)
    assert observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name == "observer.Observer"


@pytest.mark.parametrize("proto", _hubble.PROTOS)
def test_stubs_match_the_pinned_protos(proto: str, tmp_path: Path) -> None:
    out = tmp_path / "set.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{HACK / 'api' / 'v1'}",
                    f"--descriptor_set_out={out}", proto], check=True, capture_output=True)
    [want] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    _drop_json_names(want.message_type)
    got = descriptor_pb2.FileDescriptorProto.FromString(_stub(proto).DESCRIPTOR.serialized_pb)
    assert got == want, f"bng_operator/_hubble is stale for {proto}: run hack/hubble/protos.sh"
