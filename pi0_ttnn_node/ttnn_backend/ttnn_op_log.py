"""Record what the model asks of ttnn: call patterns, host dispatches, bytes per memory kind.

`OpLog` wraps the ttnn ops while it is active (on top of the emulation, or of a real card) and keeps
one `CallRecord` per host-issued call: op name, each tensor operand as layout/dtype/memory kind, the
output's memory kind, the program-config class and the compute-kernel fidelity. Calls issued during
a trace capture are stored with their trace and counted again each time `execute_trace` replays it,
so `summary()` gives per region: host dispatches (what the host issued outside captures), device
ops executed (eager plus replayed), bytes read + written per memory kind, and transfers. Bytes are
tensor sizes at their device dtype (bf16 2 B, bfloat8_b 1088 B per tile), not measured traffic.
Counterpart: emulation.py (its own op counters; this log also runs on a card).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

UPLOADS = ("from_torch", "as_tensor", "to_device", "copy_host_to_device_tensor")
DOWNLOADS = ("to_torch", "from_device")
CONTROL = ("begin_trace_capture", "end_trace_capture", "execute_trace", "release_trace",
           "synchronize_device", "record_event", "wait_for_event", "close_device")
NOT_DEVICE_WORK = ("deallocate",)
IN_PLACE = ("fill_cache", "copy")  # ops that write into an existing destination tensor
GOLDEN_ATTRS = ("golden_function", "preprocess_golden_function_inputs",
                "postprocess_golden_function_outputs", "python_fully_qualified_name")
_BYTES = {"BFLOAT16": 2.0, "FLOAT32": 4.0, "UINT32": 4.0, "INT32": 4.0, "UINT16": 2.0,
          "BFLOAT8_B": 1088 / 1024, "BFLOAT4_B": 576 / 1024}


def _short(value: Any) -> str:
    return str(value).split(".")[-1].split("::")[-1]


def memory_kind(tensor: Any) -> str:
    """'DRAM', 'L1', 'L1_BLOCK_SHARDED', ... of a device tensor; 'host' for a host tensor."""
    try:
        mc = tensor.memory_config()
    except Exception:  # host tensors have no memory config
        return "host"
    buffer, layout = _short(mc.buffer_type), _short(mc.memory_layout)
    return buffer if layout == "INTERLEAVED" else f"{buffer}_{layout}"


def tensor_bytes(tensor: Any) -> int:
    per = _BYTES.get(_short(tensor.dtype).upper(), 4.0)
    return int(math.prod(list(tensor.padded_shape)) * per)


def describe_tensor(tensor: Any) -> str:
    layout = _short(tensor.layout).replace("_LAYOUT", "")
    return f"{layout}/{_short(tensor.dtype)}/{memory_kind(tensor)}"


@dataclass(frozen=True)
class CallPattern:
    """What distinguishes one kind of call on the device: the row of docs/ttnn_hardware.md."""

    op: str
    inputs: Tuple[str, ...]  # layout/dtype/memory of each tensor operand, in call order
    output: str  # memory kind of the (first) output
    program_config: str  # class name, or "" (ttnn chooses)
    kernel: str  # "HiFi4+fp32", "LoFi", or "" (op default)


@dataclass
class CallRecord:
    pattern: CallPattern
    kind: str  # op | upload | download | control
    bytes_by_memory: Dict[str, int]
    trace_id: Optional[int] = None  # set when issued inside a trace capture
    stage: str = ""  # OpLog.stage when the call was issued (kept through trace replays)


@dataclass
class Summary:
    """Counts for one measured region (e.g. one sample_actions call)."""

    dispatches: int = 0  # host-issued calls outside captures (ops, transfers, trace control)
    device_ops: int = 0  # ops the device executed: eager plus every replayed captured op
    ops_by_name: collections.Counter = field(default_factory=collections.Counter)
    bytes_by_memory: collections.Counter = field(default_factory=collections.Counter)
    uploads: int = 0
    downloads: int = 0
    upload_bytes: int = 0
    trace_replays: int = 0
    ops_by_stage: collections.Counter = field(default_factory=collections.Counter)


def _tensors(values: Iterable[Any], tensor_type: type) -> List[Any]:
    out: List[Any] = []
    for value in values:
        if isinstance(value, tensor_type):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(_tensors(value, tensor_type))
    return out


def _kernel_text(config: Any) -> str:
    if config is None:
        return ""
    fidelity = _short(getattr(config, "math_fidelity", ""))
    return fidelity + ("+fp32" if getattr(config, "fp32_dest_acc_en", False) else "")


class OpLog:
    """Wrap ttnn's ops while active (`with OpLog(ttnn) as log:`); restore them on exit."""

    def __init__(self, ttnn: Any, names: Optional[Iterable[str]] = None) -> None:
        self.ttnn = ttnn
        self.names = list(names) if names is not None else default_op_names()
        self.records: List[CallRecord] = []
        self.traces: Dict[int, List[CallRecord]] = collections.defaultdict(list)
        self.replays: List[Tuple[int, int]] = []  # (index in records, trace id)
        self._capturing: Optional[int] = None
        self._patches: List[Tuple[Any, str, Any]] = []
        self.stage = ""  # label for the calls issued from now on (e.g. "loop")

    # -- patching ---------------------------------------------------------------------------------
    def __enter__(self) -> "OpLog":
        for qualified in self.names:
            parts = qualified.split(".")
            module = self.ttnn if len(parts) == 1 else getattr(self.ttnn, parts[0], None)
            original = getattr(module, parts[-1], None) if module is not None else None
            if original is None:
                continue
            self._patches.append((module, parts[-1], original))
            setattr(module, parts[-1], self._wrap(qualified, original))
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, name, original in reversed(self._patches):
            setattr(module, name, original)
        self._patches.clear()

    def _wrap(self, qualified: str, original: Callable) -> Callable:
        def logged(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self._record(qualified, args, kwargs, result)
            return result

        logged.__wrapped__ = original
        logged.__name__ = qualified.split(".")[-1]
        for attr in GOLDEN_ATTRS:  # ttnn looks goldens up on the module attribute (activations)
            if hasattr(original, attr):
                setattr(logged, attr, getattr(original, attr))
        return logged

    def _record(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        ttnn = self.ttnn
        if name in NOT_DEVICE_WORK:
            return
        if name == "from_torch" and kwargs.get("device") is None and (len(args) < 5):
            return  # a host-only conversion, not a transfer
        kind = ("upload" if name in UPLOADS else "download" if name in DOWNLOADS
                else "control" if name in CONTROL else "op")
        inputs = _tensors(list(args) + list(kwargs.values()), ttnn.Tensor)
        outputs = _tensors([result], ttnn.Tensor)
        moved: Dict[str, int] = collections.Counter()
        if kind == "op" and name in IN_PLACE and len(inputs) >= 2:
            # only the written rows move (read from the source, written into the destination)
            dst, src = (inputs[0], inputs[1]) if name == "fill_cache" else (inputs[1], inputs[0])
            moved[memory_kind(src)] += tensor_bytes(src)
            moved[memory_kind(dst)] += tensor_bytes(src)
        elif kind == "op":
            for t in inputs + outputs:
                moved[memory_kind(t)] += tensor_bytes(t)
        elif kind == "upload" and outputs:
            moved["host->device"] += tensor_bytes(outputs[0])
        pcfg = kwargs.get("program_config")
        pattern = CallPattern(
            op=name, inputs=tuple(describe_tensor(t) for t in inputs if kind != "upload"),
            output=memory_kind(outputs[0]) if outputs else "",
            program_config=type(pcfg).__name__ if pcfg is not None else "",
            kernel=_kernel_text(kwargs.get("compute_kernel_config")))
        record = CallRecord(pattern, kind, dict(moved), self._capturing, self.stage)
        if name == "begin_trace_capture":
            self._capturing = int(result)
            record.trace_id = None
        elif name == "end_trace_capture":
            self._capturing = None
            record.trace_id = None
        elif name == "execute_trace":
            trace_id = int(kwargs.get("trace_id", args[1] if len(args) > 1 else -1))
            self.replays.append((len(self.records), trace_id))
        self.records.append(record)
        if record.trace_id is not None:
            self.traces[record.trace_id].append(record)

    # -- reading ---------------------------------------------------------------------------------
    def mark(self) -> int:
        """Position to pass to summary(since=...) for a region that starts now."""
        return len(self.records)

    def summary(self, since: int = 0) -> Summary:
        out = Summary()
        replay_at = {index: trace for index, trace in self.replays if index >= since}
        for index, record in enumerate(self.records[since:], start=since):
            if record.trace_id is not None:
                continue  # issued while capturing: counted when replayed
            out.dispatches += 1
            self._add(out, record)
            if index in replay_at:
                out.trace_replays += 1
                for captured in self.traces.get(replay_at[index], []):
                    self._add(out, captured)
        return out

    @staticmethod
    def _add(out: Summary, record: CallRecord) -> None:
        if record.kind == "op":
            out.device_ops += 1
            out.ops_by_name[record.pattern.op] += 1
            out.ops_by_stage[record.stage] += 1
            out.bytes_by_memory.update(record.bytes_by_memory)
        elif record.kind == "upload":
            out.uploads += 1
            out.upload_bytes += sum(record.bytes_by_memory.values())
        elif record.kind == "download":
            out.downloads += 1

    def patterns(self) -> collections.Counter:
        """Every distinct device-op call pattern seen (captured calls included), with counts."""
        return collections.Counter(r.pattern for r in self.records if r.kind == "op")


def default_op_names() -> List[str]:
    """Every op the emulation implements plus the event calls: all a model may issue."""
    from pi0_ttnn_node.ttnn_backend.emulated_ops import op_table

    names = list(op_table())
    for extra in ("record_event", "wait_for_event"):
        if extra not in names:
            names.append(extra)
    return names
