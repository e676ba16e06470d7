"""The --architecture requirement parser and matcher (README, "Running server and agents on separate machines"; docs/compatibility.md)."""

from __future__ import annotations

import pytest
from phpo.schemas.jobs import AgentResources, GPUInfo
from phpo.server.services.resource_requirements import ArchitectureError, parse_architecture, parse_sites

CPU_ONLY = AgentResources(arch="x86_64", cpu_flags=["sse4_2", "avx2"])
ARM = AgentResources(arch="aarch64", cpu_flags=["neon"])
A100_40 = AgentResources(
    arch="x86_64",
    cpu_flags=["avx2"],
    gpus=[GPUInfo(index=0, vendor="nvidia", model="A100-SXM4-40GB", memory_mb=40960)],
)
TWO_AMD = AgentResources(
    arch="x86_64", gpus=[GPUInfo(index=i, vendor="amd", model="MI250X", memory_mb=65536) for i in range(2)]
)


@pytest.mark.parametrize(
    "spec,matches",
    [
        (None, {"cpu", "arm", "a100", "amd"}),
        ("", {"cpu", "arm", "a100", "amd"}),
        ("#x86_64", {"cpu", "a100", "amd"}),
        ("#x86_64-*-avx2", {"cpu", "a100"}),
        ("#x86_64-*-avx2&nvidia", {"a100"}),
        ("#&nvidia:vram>=40960", {"a100"}),
        ("#&nvidia:vram>40960", set()),
        ("#&*", {"a100", "amd"}),
        ("&amd-mi250*", {"amd"}),
        ("&amd:count>=2", {"amd"}),
        ("&amd:count>=3", set()),
        ("el9#aarch64", {"arm"}),
        ("#*-*-avx2+sse4_2", {"cpu"}),
    ],
)
def test_matching(spec, matches):
    req = parse_architecture(spec)
    agents = {"cpu": CPU_ONLY, "arm": ARM, "a100": A100_40, "amd": TWO_AMD}
    assert {name for name, res in agents.items() if req.matches(res)} == matches


@pytest.mark.parametrize("bad", ["#x86_64&nvidia:vram~~big", "#a-b-c-d", "#&nvidia:colour=red", "#&:vram>=1"])
def test_unreadable_requirements_are_errors(bad):
    with pytest.raises(ArchitectureError):
        parse_architecture(bad)


def test_sites():
    assert parse_sites(None) is None and parse_sites(" ") is None
    assert parse_sites("CERN, BNL,") == frozenset({"CERN", "BNL"})
