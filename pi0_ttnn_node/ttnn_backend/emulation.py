"""CPU EMULATION of a Tenstorrent device for the unchanged TTNN model code (not a card, not its timing).

While an `EmulatedDevice` is open, the supported op attributes of `ttnn`, `ttnn.experimental` and
`ttnn.transformer` are replaced: each call is bound to the REAL op's signature (unknown keyword ->
TypeError), runs the op's torch semantics (emulated_ops.py: ttnn golden functions where usable) and
re-stores the result with the real `ttnn.from_torch` (real bf16 / bfloat8_b rounding, tile padding).
Matmul-class ops follow the matrix engine's numerics (emulated_numerics.py: fidelity phases, Dest
width, TF32 source registers). The board's limits are enforced (emulated_limits.py: worker grid, L1
per core, DRAM, shard specs, program configs, trace region). Counters: ops, FLOPs, transfers; with
`stats.start_recording()` one OpRecord per executed op (for the cost model). Trace capture records
the op list and replays it in Python. Closing restores every original attribute.
Counterpart: runtime.py (opens it on request).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pi0_ttnn_node.ttnn_backend import emulated_ops
from pi0_ttnn_node.ttnn_backend.emulated_limits import DeviceBudget, board_limits
from pi0_ttnn_node.ttnn_backend.emulation_stats import MATMUL_OPS, EmulationStats, Operand, OpRecord  # noqa: F401
from pi0_ttnn_node.ttnn_backend.op_signatures import make_checker

LOG = logging.getLogger(__name__)

SUBMODULES = ("experimental", "transformer")

_ACTIVE: List["EmulatedDevice"] = []
_TENSOR_TYPES: Dict[int, type] = {}
_CHECKERS: Dict[Tuple[str, int], Callable] = {}


def device_tensor_type(ttnn: Any) -> type:
    """Return the ttnn.Tensor subclass that marks a tensor as resident on an emulated device."""
    if id(ttnn) in _TENSOR_TYPES:
        return _TENSOR_TYPES[id(ttnn)]

    class EmulatedDeviceTensor(ttnn.Tensor):
        """A ttnn.Tensor living on an EmulatedDevice; its current value is the host tensor `_host`.

        The C++ base is a copy of the first value (same shape, dtype, layout); in-place writes
        (`ttnn.copy`, trace replay) only replace `_host`, so emulated ops always read `_host`.
        """

        def __init__(self, host: Any, device: "EmulatedDevice", memory_config: Any) -> None:
            super().__init__(host)
            self._host = host
            self._emu_device = device
            self._memory_config = memory_config
            self._deallocated = False
            self._stale = False  # written inside a trace capture, not yet replayed
            if not device._replaying:  # a replay writes into the buffers the capture allocated
                device.budget.allocate(self, memory_config, f"ttnn.{device.current_op}")

        def device(self) -> "EmulatedDevice":
            return self._emu_device

        def storage_type(self) -> Any:
            return ttnn.StorageType.DEVICE

        def is_allocated(self) -> bool:
            return not self._deallocated

        def memory_config(self) -> Any:
            return self._memory_config

        def deallocate(self, force: bool = True) -> None:
            ttnn.deallocate(self, force)

        def cpu(self, blocking: bool = True, cq_id: Any = None) -> Any:
            return ttnn.from_device(self)

        def to_torch(self, *args: Any, **kwargs: Any) -> Any:
            return ttnn.to_torch(self)

        def __repr__(self) -> str:
            return (f"EmulatedDeviceTensor(shape={list(self.shape)}, dtype={self.dtype}, layout={self.layout}, "
                    f"on {self._emu_device!r})")

    _TENSOR_TYPES[id(ttnn)] = EmulatedDeviceTensor
    return EmulatedDeviceTensor


def read_descriptor_arch(descriptor: Path) -> Tuple[str, str]:
    """Return (arch, board type) named in a UMD cluster descriptor YAML."""
    import yaml

    data = yaml.safe_load(descriptor.read_text())
    arch = str(next(iter((data.get("arch") or {0: "wormhole_b0"}).values())))
    boards = data.get("chip_to_boardtype") or {}
    board = str(next(iter(boards.values()))) if boards else ("p150" if arch == "blackhole" else "n150")
    return arch, board


class EmulatedDevice:
    """The object passed as `device=` to ttnn calls when no card is used. Open it through runtime.py."""

    def __init__(self, ttnn: Any, descriptor: Path, *, device_id: int = 0, l1_small_size: int = 0,
                 trace_region_size: int = 0, num_command_queues: int = 1) -> None:
        self.ttnn = ttnn
        self.descriptor = Path(descriptor)
        self.arch_name, self.board = read_descriptor_arch(self.descriptor)
        self.limits = board_limits(self.descriptor)
        self.budget = DeviceBudget(self.limits, l1_small_size, trace_region_size)
        self.skip_matmul_math = False  # shape-only recording (cost model): matmul outputs are zeros
        self.current_op = ""
        self.device_id = device_id
        self.l1_small_size = l1_small_size
        self.trace_region_size = trace_region_size
        self.num_command_queues = num_command_queues
        self.stats = EmulationStats()
        self.tensor_type = device_tensor_type(ttnn)
        self.originals: Dict[str, Any] = {}
        self.is_open = False
        self.program_cache_enabled = True
        self._program_cache: set = set()
        self._patches: List[Tuple[Any, str, Any]] = []
        self._traces: Dict[int, List[Tuple[Callable, Dict[str, Any], Any]]] = {}
        self._capturing: Optional[int] = None
        self._replaying = False
        self._next_trace_id = 0

    # -- device methods the model code calls -------------------------------------------------------
    def compute_with_storage_grid_size(self) -> Any:
        x, y = self.limits.grid
        return self.ttnn.CoreCoord(x, y)

    def dram_grid_size(self) -> Any:
        return self.ttnn.CoreCoord(12 if self.arch_name == "wormhole_b0" else 8, 1)

    def arch(self) -> Any:
        return self.ttnn.device.Arch.BLACKHOLE if self.arch_name == "blackhole" else self.ttnn.device.Arch.WORMHOLE_B0

    def id(self) -> int:
        return self.device_id

    def get_num_devices(self) -> int:
        return 1

    def enable_program_cache(self) -> None:
        self.program_cache_enabled = True

    def disable_and_clear_program_cache(self) -> None:
        self.program_cache_enabled = False
        self._program_cache.clear()

    def num_program_cache_entries(self) -> int:
        return len(self._program_cache)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"EmulatedDevice({self.arch_name} {self.board}, CPU EMULATION, {state})"

    # -- open / close ------------------------------------------------------------------------------
    def open(self) -> "EmulatedDevice":
        """Patch ttnn so that its ops run on this emulated device; only one may be open at a time."""
        if _ACTIVE:
            raise RuntimeError(f"{_ACTIVE[0]!r} is already open in this process; close it before opening another")
        self._patch_all()
        self.is_open = True
        _ACTIVE.append(self)
        LOG.warning(
            "ttnn EMULATION on CPU, not a Tenstorrent card: %s %s (descriptor %s). Ops run their ttnn "
            "torch semantics with real bf16/bfloat8_b storage rounding and the matrix engine's fidelity and "
            "Dest-width numerics; timings are NOT hardware timings.",
            self.arch_name, self.board, self.descriptor,
        )
        return self

    def close(self) -> None:
        """Restore every patched ttnn attribute; safe to call twice."""
        if not self.is_open:
            return
        for module, name, original in reversed(self._patches):
            setattr(module, name, original)
        self._patches.clear()
        self._traces.clear()
        self._capturing = None
        self.is_open = False
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def __enter__(self) -> "EmulatedDevice":
        return self if self.is_open else self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- helpers used by emulated_ops ------------------------------------------------------------
    @property
    def capturing(self) -> bool:
        return self._capturing is not None

    def count(self, name: str, flops: int = 0, signature: Any = None) -> None:
        self.stats.ops[name] += 1
        if flops:
            self.stats.flops_by_op[name] += int(flops)
        if signature is not None and self.program_cache_enabled:
            self._program_cache.add((name, signature))

    def record_op(self, name: str, inputs: Any, outputs: Any, flops: int, kernel: Any = None) -> None:
        """Append an OpRecord when the stats are recording (cost model); otherwise nothing."""
        if self.stats.records is None:
            return
        operands = [tuple(_operand(t) for t in group if self.is_device_tensor(t)) for group in (inputs, outputs)]
        self.stats.records.append(OpRecord(
            name, self.stats.stage, operands[0], operands[1], int(flops), kernel[0] if kernel else None,
            kernel[1] if kernel else None, self.capturing, self._replaying))

    def forbid_in_capture(self, what: str) -> None:
        if self.capturing:
            raise RuntimeError(
                f"{what} during trace capture: host<->device transfers are not allowed inside "
                "begin_trace_capture/end_trace_capture on a card; move them before the capture and refresh "
                "traced inputs with ttnn.copy or ttnn.copy_host_to_device_tensor"
            )

    def is_device_tensor(self, value: Any) -> bool:
        return isinstance(value, self.tensor_type)

    # -- patching --------------------------------------------------------------------------------
    def _patch_all(self) -> None:
        ttnn = self.ttnn
        fast_operation = type(ttnn.linear)  # read before ttnn.linear itself is replaced
        table = emulated_ops.op_table()
        for qualified, impl in table.items():
            module, name = self._resolve(qualified)
            original = getattr(module, name, None)
            if original is None:
                LOG.debug("ttnn.%s is not in the installed ttnn; not emulated", qualified)
                continue
            self.originals[qualified] = original
            self._set(module, name, self._emulated(qualified, original, impl))
        for module in [ttnn] + [getattr(ttnn, sub) for sub in SUBMODULES]:
            prefix = "" if module is ttnn else module.__name__.split(".")[-1] + "."
            for name, value in list(vars(module).items()):
                if isinstance(value, fast_operation) and prefix + name not in table:
                    self._set(module, name, self._guarded(prefix + name, value))

    def _resolve(self, qualified: str) -> Tuple[Any, str]:
        parts = qualified.split(".")
        module = self.ttnn if len(parts) == 1 else getattr(self.ttnn, parts[0])
        return module, parts[-1]

    def _set(self, module: Any, name: str, replacement: Any) -> None:
        self._patches.append((module, name, getattr(module, name)))
        setattr(module, name, replacement)

    def _touches_device(self, args: tuple, kwargs: dict) -> bool:
        values = list(args) + list(kwargs.values())
        while values:
            value = values.pop()
            if value is self or self.is_device_tensor(value):
                return True
            if isinstance(value, (list, tuple)):
                values.extend(value)
        return False

    def _emulated(self, qualified: str, original: Any, impl: Callable) -> Callable:
        key = (qualified, id(original))
        if key not in _CHECKERS:  # parsing the real signatures is slow; they never change in-process
            _CHECKERS[key] = make_checker(qualified, original)
        check = _CHECKERS[key]
        host_ok = qualified in emulated_ops.HOST_OK

        def emulated_op(*args: Any, **kwargs: Any) -> Any:
            bound = check(args, kwargs)
            if not self._touches_device(args, kwargs):
                if host_ok:
                    return original(*args, **kwargs)
                raise RuntimeError(
                    f"ttnn.{qualified} was called with host tensors only; on a card it needs its tensor "
                    "inputs on the device (pass device= to ttnn.from_torch or call ttnn.to_device first)"
                )
            self.current_op = qualified
            _check_static(self, qualified, bound)
            result = impl(self, bound)
            if self.capturing and qualified not in emulated_ops.TRACE_CONTROL:
                self._traces[self._capturing].append((impl, bound, result))
                self.budget.check_trace(len(self._traces[self._capturing]))
                for tensor in _tensors_in(result, self):
                    tensor._stale = True
            return result

        emulated_op.__doc__ = f"EMULATED ttnn.{qualified} (CPU); real op: {original!r}"
        return _like(emulated_op, qualified, original)

    def _guarded(self, qualified: str, original: Any) -> Callable:
        def guarded_op(*args: Any, **kwargs: Any) -> Any:
            if self._touches_device(args, kwargs):
                raise NotImplementedError(
                    f"ttnn.{qualified} is not emulated; it was called with a tensor on {self!r}. Add its torch "
                    "semantics to pi0_ttnn_node/ttnn_backend/emulated_ops.py or run on a Tenstorrent card."
                )
            return original(*args, **kwargs)

        return _like(guarded_op, qualified, original)

    # -- trace capture and replay ------------------------------------------------------------------
    def begin_capture(self, cq_id: Any) -> int:
        self._check_cq(cq_id)
        if self.trace_region_size <= 0:
            raise RuntimeError(
                f"begin_trace_capture on {self!r} opened with trace_region_size={self.trace_region_size}; a card "
                "needs a trace region: open the device with trace_region_size > 0 (e.g. 80_000_000)"
            )
        if self.capturing:
            raise RuntimeError(f"trace {self._capturing} is still being captured; end it before starting another")
        self._next_trace_id += 1
        self._capturing = self._next_trace_id
        self._traces[self._capturing] = []
        return self._capturing

    def end_capture(self, trace_id: int, cq_id: Any) -> None:
        self._check_cq(cq_id)
        if self._capturing != int(trace_id):
            raise RuntimeError(f"end_trace_capture({trace_id}) but the trace being captured is {self._capturing}")
        self._capturing = None

    def execute(self, trace_id: int, cq_id: Any) -> None:
        """Replay a captured trace: rerun each recorded op and write its result into the captured outputs."""
        self._check_cq(cq_id)
        steps = self._trace(trace_id)
        self._replaying = True
        try:
            for impl, bound, recorded in steps:
                fresh = impl(self, bound)
                for target, value in zip(_tensors_in(recorded, self), _tensors_in(fresh, self)):
                    target._host, target._deallocated, target._stale = value._host, False, False
        finally:
            self._replaying = False
        self.stats.trace_replays += 1

    def release(self, trace_id: int) -> None:
        self._trace(trace_id)
        del self._traces[int(trace_id)]

    def _trace(self, trace_id: int) -> list:
        if self.capturing:
            raise RuntimeError("execute/release_trace called while a trace is still being captured")
        if int(trace_id) not in self._traces:
            raise RuntimeError(f"trace id {trace_id} is not a captured, unreleased trace of {self!r}")
        return self._traces[int(trace_id)]

    def _check_cq(self, cq_id: Any) -> None:
        if cq_id is not None and int(cq_id) >= self.num_command_queues:
            raise RuntimeError(
                f"cq_id={cq_id} but {self!r} was opened with num_command_queues={self.num_command_queues}"
            )


def _like(replacement: Callable, qualified: str, original: Any) -> Callable:
    """Give a replacement the name and golden-function attributes of the real op (goldens look them up)."""
    replacement.__name__ = qualified.split(".")[-1]
    replacement.__wrapped__ = original
    for attr in ("golden_function", "preprocess_golden_function_inputs", "postprocess_golden_function_outputs",
                 "python_fully_qualified_name"):
        if hasattr(original, attr):
            setattr(replacement, attr, getattr(original, attr))
    return replacement


def _tensors_in(value: Any, device: EmulatedDevice) -> List[Any]:
    """Device tensors in an op result (a tensor, a tuple/list of them, or None), in order."""
    if device.is_device_tensor(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if device.is_device_tensor(item)]
    return []


def _operand(tensor: Any) -> Operand:
    config = tensor.memory_config()
    memory = str(config.buffer_type).split(".")[-1].split("::")[-1].upper()
    return Operand(tuple(int(d) for d in tensor.shape), str(tensor.dtype).split(".")[-1].upper(),
                   "L1" if memory == "L1" else "DRAM", emulated_ops.nbytes(tensor))


def _check_static(dev: EmulatedDevice, qualified: str, a: Dict[str, Any]) -> None:
    """Board checks that need only the call: core grids and program configs."""
    what = f"ttnn.{qualified}"
    if a.get("core_grid") is not None:
        dev.budget.check_core_grid(a["core_grid"], what)
    if qualified in ("linear", "matmul") and a.get("program_config") is not None:
        x, w = a["input_tensor_a"], a["input_tensor_b"]
        if dev.is_device_tensor(x) and dev.is_device_tensor(w):
            m = x.shape[-1] if a.get("transpose_a") else x.shape[-2]
            k = x.shape[-2] if a.get("transpose_a") else x.shape[-1]
            n = w.shape[-2] if a.get("transpose_b") else w.shape[-1]
            m = m * (int(x.logical_volume()) // (int(x.shape[-1]) * int(x.shape[-2])))  # batch folds into M
            config = a.get("compute_kernel_config")
            fp32 = bool(getattr(config, "fp32_dest_acc_en", False)) if config is not None else False
            dev.budget.check_matmul_program_config(a["program_config"], m, k, n, fp32, what)
    if qualified == "transformer.scaled_dot_product_attention":
        dev.budget.check_sdpa_program_config(a.get("program_config"), what)


def open_emulated_device(ttnn: Any, descriptor: Path, **device_args: Any) -> EmulatedDevice:
    """Create and open an EmulatedDevice (patches ttnn until `close()`)."""
    return EmulatedDevice(ttnn, descriptor, **device_args).open()
