"""CPU EMULATION of a ttnn.MeshDevice (several chips of one board), for data-parallel PI0.

A card runs `ttnn.open_mesh_device(mesh_shape=ttnn.MeshShape(rows, cols), ...)` and splits it
with `mesh.create_submeshes(ttnn.MeshShape(1, 1))` into one submesh per chip. The emulation
mirrors that: `EmulatedMeshDevice` holds one `EmulatedDevice` per chip (own DRAM / L1 budget,
own op, FLOP and transfer counters, own traces) and `create_submeshes` returns them. The
emulation patches the process-wide `ttnn` module for one device at a time, so the chip whose
tensors are used must be made current with `activate(i)` (ttnn_mesh.py does this around every
per-chip stage); a card needs no such call. Chips come from the board's cluster descriptor
(n300: 2). Not a card, not its timing.
Counterpart: runtime.py (opens it for `mesh_shape` != "1x1"), emulation.py (one chip).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Tuple

from pi0_ttnn_node.errors import BackendUnavailableError
from pi0_ttnn_node.ttnn_backend import emulation
from pi0_ttnn_node.ttnn_backend.emulated_limits import board_limits
from pi0_ttnn_node.ttnn_backend.emulation_stats import EmulationStats

LOG = logging.getLogger(__name__)


def parse_mesh_shape(text: str) -> Tuple[int, int]:
    """'1x2' -> (1, 2); the ttnn.MeshShape(rows, cols) the knob `mesh_shape` names."""
    try:
        rows, cols = (int(part) for part in str(text).lower().split("x"))
    except ValueError as err:
        raise ValueError(f"mesh_shape {text!r} is not 'ROWSxCOLS' (e.g. '1x2')") from err
    if rows < 1 or cols < 1:
        raise ValueError(f"mesh_shape {text!r} needs at least one row and one column")
    return rows, cols


class EmulatedMeshDevice:
    """Stands in for ttnn.MeshDevice; one EmulatedDevice per chip, each made current in turn."""

    def __init__(self, ttnn: Any, descriptor: Path, shape: Tuple[int, int], **device_args: Any) -> None:
        self.ttnn = ttnn
        self.descriptor = Path(descriptor)
        self.shape = shape
        count = shape[0] * shape[1]
        available = board_limits(self.descriptor).chips
        if count > available:
            raise BackendUnavailableError(
                f"mesh_shape {shape[0]}x{shape[1]} needs {count} chips but the emulated board "
                f"({self.descriptor.name}) has {available}; use emulated_board wormhole_n300 for 1x2 "
                "or mesh_shape 1x1")
        base = int(device_args.pop("device_id", 0))
        self.chips: List[emulation.EmulatedDevice] = [
            emulation.EmulatedDevice(ttnn, self.descriptor, device_id=base + i, **device_args)
            for i in range(count)]
        self.active: Optional[int] = None
        self.is_open = True
        self.activate(0)

    # -- the MeshDevice methods the backend calls ---------------------------------------------
    def get_num_devices(self) -> int:
        return len(self.chips)

    def create_submeshes(self, submesh_shape: Any) -> List[emulation.EmulatedDevice]:
        """One 1x1 submesh per chip (the only split data parallelism needs here)."""
        if (int(submesh_shape[0]), int(submesh_shape[1])) != (1, 1):
            raise ValueError(f"the emulated mesh only splits into 1x1 submeshes, got {submesh_shape}")
        return list(self.chips)

    def activate(self, index: int) -> emulation.EmulatedDevice:
        """Make chip `index` the one the patched ttnn ops run on (emulation only)."""
        if not self.is_open:
            raise RuntimeError(f"{self!r} is closed")
        if self.active == index:
            return self.chips[index]
        if self.active is not None:
            _suspend(self.chips[self.active])
        _resume(self.chips[index])
        self.active = index
        return self.chips[index]

    @property
    def chip_stats(self) -> List[EmulationStats]:
        return [chip.stats for chip in self.chips]

    @property
    def stats(self) -> EmulationStats:
        """Counters of all chips added up (per chip: `chip_stats`)."""
        total = EmulationStats()
        for s in self.chip_stats:
            total.ops.update(s.ops)
            total.flops_by_op.update(s.flops_by_op)
            total.uploads += s.uploads
            total.downloads += s.downloads
            total.upload_bytes += s.upload_bytes
            total.download_bytes += s.download_bytes
            total.trace_replays += s.trace_replays
        return total

    def close(self) -> None:
        """Close every chip (restores ttnn); safe to call twice."""
        if not self.is_open:
            return
        self.is_open = False
        self.active = None
        for chip in self.chips:
            chip.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return (f"EmulatedMeshDevice({self.shape[0]}x{self.shape[1]} {self.chips[0].arch_name} "
                f"{self.chips[0].board}, CPU EMULATION, {state})")


def _suspend(chip: emulation.EmulatedDevice) -> None:
    """Restore the real ttnn attributes but keep the chip's tensors, budget and traces."""
    for module, name, original in reversed(chip._patches):
        setattr(module, name, original)
    chip._patches.clear()
    if chip in emulation._ACTIVE:
        emulation._ACTIVE.remove(chip)


def _resume(chip: emulation.EmulatedDevice) -> None:
    if emulation._ACTIVE:
        raise RuntimeError(f"{emulation._ACTIVE[0]!r} is open; close it before using an emulated mesh")
    if chip.is_open:
        chip._patch_all()
        emulation._ACTIVE.append(chip)
    else:
        chip.open()


def open_emulated_mesh(ttnn: Any, descriptor: Path, mesh_shape: str, **device_args: Any) -> EmulatedMeshDevice:
    rows, cols = parse_mesh_shape(mesh_shape)
    mesh = EmulatedMeshDevice(ttnn, descriptor, (rows, cols), **device_args)
    LOG.warning("ttnn EMULATION on CPU: %r (one emulated device per chip; not a card)", mesh)
    return mesh
