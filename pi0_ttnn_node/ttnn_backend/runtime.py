"""Open and close the TTNN device: a real Tenstorrent card, or the CPU emulation only when asked.

The configuration is ttnn_config.TtRuntimeConfig (every knob, presets); defaults follow tt-metal's
PI0 code: l1_small_size 24576, one command queue, no trace region (80 MB once a trace is on).
Emulation is never chosen silently: without a card and without `emulate=True` (node parameter
`policy.ttnn_emulate: true`) opening fails with BackendUnavailableError. Counterpart: emulation.py (the emulated device).
"""

from __future__ import annotations

import atexit
import glob
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Dict

from pi0_ttnn_node.errors import BackendUnavailableError
# The knob table lives in ttnn_config.py; re-exported here for callers that open devices.
from pi0_ttnn_node.ttnn_backend.ttnn_config import EMULATED_BOARDS, TtRuntimeConfig  # noqa: F401

LOG = logging.getLogger(__name__)

MOCK_ENV = "TT_METAL_MOCK_CLUSTER_DESC_PATH"
MOCK_CLUSTER_DIR = Path(__file__).resolve().parent / "mock_cluster"
CARD_GLOB = "/dev/tenstorrent*"
EMULATION_HINT = ("set the node parameter `policy.ttnn_emulate: true` (--ttnn-emulate, "
                  "TtRuntimeConfig(emulate=True)) to run the CPU emulation")

_OPEN: Dict[int, "TtDevice"] = {}


def mock_cluster_descriptor(board: str = "wormhole_n150") -> Path:
    """Path of the cluster descriptor YAML shipped with the package for `board`."""
    return MOCK_CLUSTER_DIR / EMULATED_BOARDS[board]


def import_ttnn(emulate: bool, board: str = "wormhole_n150") -> Any:
    """Import ttnn; when emulating, first point it at the shipped mock cluster (unless the env names one)."""
    if emulate and not os.environ.get(MOCK_ENV):
        os.environ[MOCK_ENV] = str(mock_cluster_descriptor(board))
    try:
        return importlib.import_module("ttnn")
    except ImportError as err:
        msg = f"the TTNN backend needs the `ttnn` Python package, which failed to import: {err}; install ttnn"
        raise BackendUnavailableError(msg) from err


def card_present() -> bool:
    """Cheap check for a Tenstorrent kernel-driver node before asking ttnn to open anything."""
    return bool(glob.glob(CARD_GLOB))


def ttnn_dtype(ttnn: Any, name: str) -> Any:
    """ttnn.DataType for a config name ('bfloat16', 'bfloat8_b', 'float32')."""
    return getattr(ttnn, name)


def compute_kernel_config(ttnn: Any, fidelity: str, fp32_dest_acc: bool, packer_l1_acc: bool = True) -> Any:
    """Kernel config as PI0's TTNN code builds it (the Wormhole class is also accepted on Blackhole)."""
    return ttnn.WormholeComputeKernelConfig(
        math_fidelity=getattr(ttnn.MathFidelity, fidelity), math_approx_mode=False,
        fp32_dest_acc_en=fp32_dest_acc, packer_l1_acc=packer_l1_acc,
    )


class TtDevice:
    """An open device (real or emulated): pass `.device` as `device=` to ttnn; close exactly once."""

    def __init__(self, cfg: TtRuntimeConfig, ttnn: Any, device: Any, is_emulated: bool) -> None:
        self.cfg = cfg
        self.ttnn = ttnn
        self.device = device
        self.is_emulated = is_emulated
        self.is_open = True

    @property
    def stats(self) -> Any:
        """Op / FLOP / transfer counters (emulation only; a card has no such counters here)."""
        if not self.is_emulated:
            raise BackendUnavailableError("op counters exist only on the emulated device; use the profiler on a card")
        return self.device.stats

    def close(self) -> None:
        """Close the device; later calls do nothing."""
        if not self.is_open:
            return
        self.is_open = False
        _OPEN.pop(self.cfg.device_id, None)
        if self.is_emulated:
            self.device.close()
            return
        try:
            self.ttnn.synchronize_device(self.device)
        finally:
            if self.cfg.mesh_shape != "1x1":
                self.ttnn.close_mesh_device(self.device)
            else:
                self.ttnn.close_device(self.device)
        LOG.info("closed Tenstorrent device %d", self.cfg.device_id)

    def __enter__(self) -> "TtDevice":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "emulated" if self.is_emulated else "card"
        return f"TtDevice({kind}, id={self.cfg.device_id}, open={self.is_open})"


def open_tt_device(cfg: TtRuntimeConfig) -> TtDevice:
    """Open the device `cfg` asks for; one per device id and process, closed at exit if still open."""
    existing = _OPEN.get(cfg.device_id)
    if existing is not None and existing.is_emulated and not existing.device.is_open:
        existing.close()  # closed behind our back with ttnn.close_device(device)
    if cfg.device_id in _OPEN:
        raise BackendUnavailableError(f"{_OPEN[cfg.device_id]!r} is already open in this process; close it first")
    handle = _open_emulated(cfg) if cfg.emulate else _open_card(cfg)
    _OPEN[cfg.device_id] = handle
    return handle


def _open_card(cfg: TtRuntimeConfig) -> TtDevice:
    if not card_present():
        raise BackendUnavailableError(
            f"no Tenstorrent device was found (no {CARD_GLOB}; is the tt-kmd driver loaded?); {EMULATION_HINT}"
        )
    ttnn = import_ttnn(emulate=False)
    if cfg.mesh_shape != "1x1":  # data parallel over chips (ttnn_mesh.py)
        from pi0_ttnn_node.ttnn_backend.ttnn_mesh import open_card_mesh

        return TtDevice(cfg, ttnn, open_card_mesh(ttnn, cfg), is_emulated=False)
    try:
        device = ttnn.open_device(
            device_id=cfg.device_id, l1_small_size=cfg.l1_small_size,
            trace_region_size=cfg.trace_region_size, num_command_queues=cfg.num_command_queues,
        )
    except Exception as err:  # ttnn raises plain RuntimeError for every driver/firmware failure
        raise BackendUnavailableError(
            f"no usable Tenstorrent device {cfg.device_id}: ttnn.open_device failed: {err}; {EMULATION_HINT}"
        ) from err
    LOG.info("opened Tenstorrent device %d (l1_small_size=%d, trace_region_size=%d, command queues=%d)",
             cfg.device_id, cfg.l1_small_size, cfg.trace_region_size, cfg.num_command_queues)
    return TtDevice(cfg, ttnn, device, is_emulated=False)


def _open_emulated(cfg: TtRuntimeConfig) -> TtDevice:
    from pi0_ttnn_node.ttnn_backend.emulation import open_emulated_device

    ttnn = import_ttnn(emulate=True, board=cfg.emulated_board)
    descriptor = Path(os.environ[MOCK_ENV])
    if descriptor in {mock_cluster_descriptor(board) for board in EMULATED_BOARDS}:
        # ttnn's host library was initialised with one of our descriptors (host-side work does not
        # depend on the board): the emulated device models the board asked for (grid, L1, DRAM).
        descriptor = mock_cluster_descriptor(cfg.emulated_board)
    elif descriptor != mock_cluster_descriptor(cfg.emulated_board):
        LOG.warning("%s is set to %s; it overrides emulated_board=%s", MOCK_ENV, descriptor, cfg.emulated_board)
    args = dict(device_id=cfg.device_id, l1_small_size=cfg.l1_small_size,
                trace_region_size=cfg.trace_region_size, num_command_queues=cfg.num_command_queues)
    if cfg.mesh_shape != "1x1":  # one emulated device per chip (emulated_mesh.py)
        from pi0_ttnn_node.ttnn_backend.emulated_mesh import open_emulated_mesh

        return TtDevice(cfg, ttnn, open_emulated_mesh(ttnn, descriptor, cfg.mesh_shape, **args),
                        is_emulated=True)
    device = open_emulated_device(ttnn, descriptor, **args)
    return TtDevice(cfg, ttnn, device, is_emulated=True)


def close_all() -> None:
    """Close every device this process opened (registered with atexit)."""
    for handle in list(_OPEN.values()):
        try:
            handle.close()
        except Exception as err:  # at exit, report and keep closing the others
            LOG.error("closing %r failed: %s", handle, err)


atexit.register(close_all)

