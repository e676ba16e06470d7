"""Matching a task's ``--architecture`` requirement against an agent's resources.

Syntax (upstream PanDA's --architecture, docs/compatibility.md): ``[platform]#[cpu][&gpu]`` where
- ``platform`` (before ``#``) names a software platform; phpo ignores it;
- ``cpu`` is ``arch-vendor-flags``: ``arch`` a glob on the agent's architecture (``x86_64``,
  ``aarch64``, ``*``), ``vendor`` is accepted but not checked (agents do not report it),
  ``flags`` CPU instruction sets the agent must have, joined with ``+`` or ``,`` (``avx2``);
- ``gpu`` is ``vendor[-model][:cond[:cond...]]``: ``vendor`` (``nvidia``, ``amd``, ``*``),
  ``model`` a case-insensitive glob on the GPU model, each ``cond`` ``vram>=MB`` (also ``>``,
  ``=``, ``<=``, ``<``) or ``count>=N``.
Examples: ``#x86_64-*-avx2&nvidia``, ``#&nvidia:vram>=40960``, ``&amd-mi250*``.
A requirement that cannot be parsed is refused at submit (422 naming ``architecture``).
"""

from __future__ import annotations

import fnmatch
import operator
import re
from dataclasses import dataclass, field

from phpo.schemas.jobs import AgentResources

_OPS = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "=": operator.eq,
    "==": operator.eq,
}
_COND = re.compile(r"^\s*(vram|count)\s*(>=|<=|==|=|>|<)\s*(\d+)\s*$", re.IGNORECASE)
_WORD = re.compile(r"^[A-Za-z0-9_.*?\[\]+,]*$")


class ArchitectureError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    arch: str = "*"
    cpu_flags: tuple[str, ...] = ()
    gpu_vendor: str | None = None  # None: no GPU needed
    gpu_model: str = "*"
    gpu_conds: tuple[tuple[str, str, int], ...] = field(default_factory=tuple)

    def matches(self, res: AgentResources) -> bool:
        if not fnmatch.fnmatchcase(res.arch.lower(), self.arch.lower()):
            return False
        have = {f.lower() for f in res.cpu_flags}
        if any(f.lower() not in have for f in self.cpu_flags):
            return False
        if self.gpu_vendor is None:
            return True
        gpus = [
            g
            for g in res.gpus
            if fnmatch.fnmatchcase(g.vendor.lower(), self.gpu_vendor.lower())
            and fnmatch.fnmatchcase(g.model.lower(), self.gpu_model.lower())
        ]
        count_conds = [c for c in self.gpu_conds if c[0] == "count"]
        vram_conds = [c for c in self.gpu_conds if c[0] == "vram"]
        gpus = [g for g in gpus if all(_OPS[op](g.memory_mb, v) for _, op, v in vram_conds)]
        if count_conds:
            return all(_OPS[op](len(gpus), v) for _, op, v in count_conds)
        return len(gpus) >= 1


ANY = Requirement()


def parse_architecture(spec: str | None) -> Requirement:
    if spec is None or not spec.strip():
        return ANY
    s = spec.strip()
    if "#" in s:
        s = s.split("#", 1)[1]
    elif not s.startswith("&") and "&" not in s and "-" not in s:
        # a bare platform name (e.g. "el9"): nothing to match
        return ANY
    cpu, _, gpu = s.partition("&")
    req: dict = {}
    if cpu.strip():
        parts = cpu.strip().split("-")
        if len(parts) > 3 or not all(_WORD.match(p) for p in parts):
            raise ArchitectureError(
                f"cannot read the CPU part {cpu!r}; expected 'arch-vendor-flags', e.g. 'x86_64-*-avx2'"
            )
        req["arch"] = parts[0] or "*"
        if len(parts) == 3 and parts[2] not in ("", "*"):
            req["cpu_flags"] = tuple(f for f in re.split(r"[+,]", parts[2]) if f)
    if gpu.strip():
        items = gpu.strip().split(":")
        head = items[0].strip()
        vendor, _, model = head.partition("-")
        if not vendor or not _WORD.match(vendor) or not _WORD.match(model):
            raise ArchitectureError(
                f"cannot read the GPU part {gpu!r}; expected e.g. 'nvidia' or 'nvidia:vram>=40960'"
            )
        conds = []
        for c in items[1:]:
            m = _COND.match(c)
            if not m:
                raise ArchitectureError(
                    f"cannot read the GPU condition {c!r}; expected e.g. 'vram>=40960' (MB)"
                )
            conds.append((m.group(1).lower(), m.group(2), int(m.group(3))))
        req.update(gpu_vendor=vendor, gpu_model=model or "*", gpu_conds=tuple(conds))
    return Requirement(**req)


def parse_sites(site: str | None) -> frozenset[str] | None:
    """``--site`` is a comma list; None means any site."""
    if not site or not site.strip():
        return None
    return frozenset(x.strip() for x in site.split(",") if x.strip()) or None
