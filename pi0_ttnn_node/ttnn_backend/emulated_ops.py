"""Torch semantics of each emulated ttnn op (the table used by emulation.py).

Every function takes the EmulatedDevice and the call's arguments bound by name to the REAL op's
signature (real defaults applied). Maths comes from `ttnn.get_golden_function(op)` where the golden
accepts our arguments; `EXPLICIT_OPS` lists the ops whose torch semantics are written here instead.
Inputs are read in fp32, outputs re-stored with the real `ttnn.from_torch` (bf16/bfloat8_b rounding).
The transformer ops live in emulated_attention_ops.py.
"""

from __future__ import annotations

import math
from math import prod as math_prod
from typing import Any, Callable, Dict, List, Sequence

import torch

from pi0_ttnn_node.ttnn_backend import emulated_numerics as numerics

TILE = 32
# ttnn's math fidelity when an op gets no compute_kernel_config: matmul / linear use
# init_device_compute_kernel_config's default (LoFi, fp32_dest_acc_en False; ttnn
# compute_kernel_config.hpp), reductions HiFi4, SDPA HiFi2; eltwise binary programs run HiFi4.
MATMUL_DEFAULT_FIDELITY = "LoFi"
REDUCE_DEFAULT_FIDELITY = "HiFi4"
SDPA_DEFAULT_FIDELITY = "HiFi2"
ELTWISE_FIDELITY = "HiFi4"
# Ops with no usable golden in ttnn 0.81.1 (none, or one that cannot take our arguments):
EXPLICIT_OPS = (
    "transfers (from_torch/as_tensor/to_torch/to_device/from_device/copy_host_to_device_tensor)",
    "deallocate", "to_layout", "to_memory_config", "typecast", "clone", "copy",
    "zeros/ones/full/arange/zeros_like/ones_like (real host op, then marked device-resident)",
    "experimental.nlp_create_qkv_heads", "experimental.nlp_concat_heads",
    "experimental.rotary_embedding without token_index (prefill; the golden only handles decode)",
    "trace capture/replay, synchronize_device, close_device",
    "fill_cache (in-place rows of a device tensor), record_event/wait_for_event (queue ids checked)",
)
# Ops that real ttnn also runs on host tensors (checked in 0.81.1 under the mock cluster).
HOST_OK = {"from_torch", "to_torch", "as_tensor", "to_device", "from_device", "deallocate", "to_layout", "reshape",
           "typecast", "pad", "zeros", "ones", "full", "arange", "zeros_like", "ones_like"}
TRACE_CONTROL = {"begin_trace_capture", "end_trace_capture", "execute_trace", "release_trace",
                 "synchronize_device", "close_device"}
_BYTES_PER_ELEMENT = {"BFLOAT16": 2.0, "FLOAT32": 4.0, "UINT32": 4.0, "INT32": 4.0, "UINT16": 2.0,
                      "BFLOAT8_B": 1088 / 1024, "BFLOAT4_B": 576 / 1024}


# -- conversions ---------------------------------------------------------------------------------
def torch_of(dev: Any, value: Any, op: str) -> Any:
    """Device tensor -> fp32 (or int64) torch tensor; lists recurse; other values pass through."""
    if isinstance(value, (list, tuple)):
        return type(value)(torch_of(dev, item, op) for item in value)
    if not isinstance(value, dev.ttnn.Tensor):
        return value
    if not dev.is_device_tensor(value) or value.device() is not dev:
        raise RuntimeError(f"ttnn.{op}: an input tensor is on the host (or another device); on a card every "
                           f"tensor input must be on the device. Move it with ttnn.to_device(t, device).")
    if value._deallocated:
        raise RuntimeError(f"ttnn.{op}: an input tensor (shape {list(value.shape)}) was deallocated")
    if value._stale and not dev.capturing and not dev._replaying:
        raise RuntimeError(f"ttnn.{op}: input shape {list(value.shape)} was written inside a trace capture and "
                           "the trace was not executed since; on a card its contents are undefined")
    out = dev.originals["to_torch"](value._host)
    return out.to(torch.float32) if out.is_floating_point() else out.to(torch.int64)


def wrap(dev: Any, value: torch.Tensor, dtype: Any, layout: Any, memory_config: Any = None) -> Any:
    """Store a torch result as the card would: real from_torch rounding, marked as device-resident."""
    ttnn = dev.ttnn
    if dtype in (ttnn.bfloat8_b, ttnn.bfloat4_b) and layout != ttnn.TILE_LAYOUT:
        raise RuntimeError(f"{dtype} requires TILE_LAYOUT on a Tenstorrent card; got {layout}")
    if dtype in (ttnn.uint32, ttnn.int32, ttnn.uint16):
        value = (torch.trunc(value) if value.is_floating_point() else value).to(torch.int64)
    host = dev.originals["from_torch"](value.contiguous(), dtype=dtype, layout=layout)
    return dev.tensor_type(host, dev, memory_config or ttnn.DRAM_MEMORY_CONFIG)


def nbytes(tensor: Any) -> int:
    per = _BYTES_PER_ELEMENT.get(str(tensor.dtype).split(".")[-1], 4.0)
    return int(math.prod(list(tensor.padded_shape)) * per)


def _golden(dev: Any, name: str) -> Callable:
    return dev.ttnn.get_golden_function(dev.originals[name])


def _signature(tensors: Sequence[Any], dev: Any) -> tuple:
    return tuple((tuple(t.shape), str(t.dtype)) for t in tensors if dev.is_device_tensor(t))


def _finish(dev: Any, name: str, out: torch.Tensor, ref: Any, a: Dict[str, Any], flops: int,
            layout: Any = None, inputs: Sequence[Any] = (), kernel: Any = None) -> Any:
    """Count the op and wrap `out` with the op's output dtype (dtype= or the input's) and layout.

    `kernel`: (fidelity, fp32 Dest) the op ran with, for the op record of the cost model.
    """
    dev.count(name, flops, _signature(inputs or [ref], dev))
    result = wrap(dev, out, a.get("dtype") or ref.dtype, layout or ref.layout, a.get("memory_config"))
    dev.record_op(name, inputs or [ref], [result], flops, kernel)
    return result


def _kw(a: Dict[str, Any], *names: str) -> Dict[str, Any]:
    return {n: a[n] for n in names if a.get(n) is not None}


# -- transfers -----------------------------------------------------------------------------------
def _upload(dev: Any, host: Any, memory_config: Any, what: str) -> Any:
    dev.forbid_in_capture(what)
    tensor = dev.tensor_type(host, dev, memory_config or dev.ttnn.DRAM_MEMORY_CONFIG)
    dev.stats.uploads += 1
    dev.stats.upload_bytes += nbytes(host)
    dev.record_op("upload", [], [tensor], 0)
    return tensor


def _download(dev: Any, tensor: Any, what: str) -> Any:
    dev.forbid_in_capture(what)
    torch_of(dev, tensor, what)  # same validity checks as an op input
    dev.stats.downloads += 1
    dev.stats.download_bytes += nbytes(tensor)
    dev.record_op("download", [tensor], [], 0)
    return tensor._host


_DEVICE_ARGS = ("device", "memory_config", "cq_id", "mesh_mapper", "queue_id")


def op_from_torch(dev: Any, a: Dict[str, Any]) -> Any:
    rest = {k: v for k, v in a.items() if k not in _DEVICE_ARGS + ("tensor",) and v is not None}
    return _upload(dev, dev.originals["from_torch"](a["tensor"], **rest), a["memory_config"], "ttnn.from_torch")


def op_as_tensor(dev: Any, a: Dict[str, Any]) -> Any:
    rest = {k: v for k, v in a.items() if k not in _DEVICE_ARGS + ("tensor",) and v is not None}
    return _upload(dev, dev.originals["as_tensor"](a["tensor"], **rest), a["memory_config"], "ttnn.as_tensor")


def op_to_device(dev: Any, a: Dict[str, Any]) -> Any:
    if dev.is_device_tensor(a["tensor"]):
        return a["tensor"]
    return _upload(dev, a["tensor"], a["memory_config"], "ttnn.to_device")


def op_copy_host_to_device_tensor(dev: Any, a: Dict[str, Any]) -> Any:
    host, target = a["host_tensor"], a["device_tensor"]
    if (list(host.shape), host.dtype, host.layout) != (list(target.shape), target.dtype, target.layout):
        raise RuntimeError(f"copy_host_to_device_tensor: host {list(host.shape)} {host.dtype} {host.layout} does not "
                           f"match device tensor {list(target.shape)} {target.dtype} {target.layout}")
    _upload(dev, host, None, "ttnn.copy_host_to_device_tensor")
    target._host, target._stale = host, False
    return target


def op_to_torch(dev: Any, a: Dict[str, Any]) -> Any:
    host = _download(dev, a["tensor"], "ttnn.to_torch")
    return dev.originals["to_torch"](host, a["dtype"], **_kw(a, "torch_rank", "mesh_composer"))


def op_from_device(dev: Any, a: Dict[str, Any]) -> Any:
    return _download(dev, a["tensor"], "ttnn.from_device")


def op_deallocate(dev: Any, a: Dict[str, Any]) -> None:
    tensor = a["tensor"]
    if dev.is_device_tensor(tensor) and not tensor._deallocated:
        tensor._deallocated = True
        dev.budget.free(tensor)


# -- layout, dtype, copies -----------------------------------------------------------------------
def op_to_layout(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["tensor"]
    return _finish(dev, "to_layout", torch_of(dev, t, "to_layout"), t, a, 0, layout=a["layout"])


def op_to_memory_config(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["tensor"]
    return _finish(dev, "to_memory_config", torch_of(dev, t, "to_memory_config"), t, a, 0)


def op_typecast(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["input_tensor"]
    a = dict(a, dtype=a.get("output_dtype") or a.get("dtype"))
    return _finish(dev, "typecast", torch_of(dev, t, "typecast"), t, a, t.logical_volume())


def op_clone(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["input"]
    return _finish(dev, "clone", torch_of(dev, t, "clone"), t, a, 0)


def op_copy(dev: Any, a: Dict[str, Any]) -> Any:
    src, dst = a["input_a"], a["input_b"]
    value = torch_of(dev, src, "copy")
    torch_of(dev, dst, "copy")
    if list(src.shape) != list(dst.shape):
        raise RuntimeError(f"ttnn.copy: source shape {list(src.shape)} != destination shape {list(dst.shape)}")
    dev.count("copy", 0, _signature([src, dst], dev))
    dev.record_op("copy", [src], [dst], 0)
    dst._host = dev.originals["from_torch"](value.contiguous(), dtype=dst.dtype, layout=dst.layout)
    return dst


def _creation(name: str) -> Callable:
    def op(dev: Any, a: Dict[str, Any]) -> Any:
        ref = a.get("tensor")
        if dev.is_device_tensor(ref):  # zeros_like / ones_like of a device tensor
            a = dict(a, tensor=torch.empty(list(ref.shape)), dtype=a.get("dtype") or ref.dtype,
                     layout=a.get("layout") or ref.layout)
            original = dev.originals["from_torch"]
            fill = 0.0 if name == "zeros_like" else 1.0
            host = original(torch.full(list(ref.shape), fill), dtype=a["dtype"], layout=a["layout"])
        else:
            host = dev.originals[name](**{k: v for k, v in a.items() if k not in _DEVICE_ARGS and v is not None})
        dev.count(name, 0)
        return dev.tensor_type(host, dev, a.get("memory_config") or dev.ttnn.DRAM_MEMORY_CONFIG)

    return op


# -- data movement (goldens) ---------------------------------------------------------------------
def op_reshape(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["input_tensor"]
    shape = [int(s) for s in (a.get("shape") or a["logical_shape"])]
    return _finish(dev, "reshape", _golden(dev, "reshape")(torch_of(dev, t, "reshape"), tuple(shape)), t, a, 0)


def op_permute(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["input_tensor"]
    out = _golden(dev, "permute")(torch_of(dev, t, "permute"), tuple(int(d) for d in a["dims"]))
    return _finish(dev, "permute", out, t, a, 0)


def op_slice(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["input_tensor"]
    starts, ends = a.get("starts", a.get("slice_start")), a.get("ends", a.get("slice_end"))
    step = a.get("slice_step") or a.get("steps")
    out = _golden(dev, "slice")(torch_of(dev, t, "slice"), list(starts), list(ends), step)
    return _finish(dev, "slice", out, t, a, 0)


def op_concat(dev: Any, a: Dict[str, Any]) -> Any:
    tensors = list(a["tensors"])
    out = _golden(dev, "concat")(torch_of(dev, tensors, "concat"), a["dim"] if a["dim"] is not None else 0)
    return _finish(dev, "concat", out, tensors[0], a, 0, inputs=tensors)


def op_pad(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["input_tensor"]
    if "padding" in a:
        out = _golden(dev, "pad")(torch_of(dev, t, "pad"), a["padding"], value=a["value"])
    else:
        out = _golden(dev, "pad")(torch_of(dev, t, "pad"), a["output_padded_shape"], a["input_tensor_start"],
                                  a["value"])
    return _finish(dev, "pad", out, t, a, 0)


def op_repeat(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["input_tensor"]
    out = _golden(dev, "repeat")(torch_of(dev, t, "repeat"), [int(r) for r in a["repeat_dims"]])
    return _finish(dev, "repeat", out, t, a, 0)


def op_embedding(dev: Any, a: Dict[str, Any]) -> Any:
    ids, weight = a["input_tensor"], a["weight"]
    out = _golden(dev, "embedding")(torch_of(dev, ids, "embedding"), torch_of(dev, weight, "embedding"))
    a = dict(a, dtype=a.get("dtype") or weight.dtype)
    return _finish(dev, "embedding", out, weight, a, 0, layout=a["layout"] or weight.layout, inputs=[ids, weight])


# -- compute (goldens) ---------------------------------------------------------------------------
def _matmul(name: str) -> Callable:
    def op(dev: Any, a: Dict[str, Any]) -> Any:
        x, w = a["input_tensor_a"], a["input_tensor_b"]
        for t in (x, w):
            if t.layout != dev.ttnn.TILE_LAYOUT:
                raise RuntimeError(f"ttnn.{name}: inputs must be TILE_LAYOUT on a card; got {t.layout}")
        if dev.skip_matmul_math:  # shape-only recording: no operand reads either
            xt, wt = (torch.zeros(()).expand(*(int(d) for d in t.shape)) for t in (x, w))
        else:
            xt, wt = torch_of(dev, x, name), torch_of(dev, w, name)
        if a["transpose_a"]:
            xt = xt.transpose(-1, -2)
        if a["transpose_b"]:
            wt = wt.transpose(-1, -2)
        if xt.shape[-1] != wt.shape[-2]:
            raise RuntimeError(f"ttnn.{name}: inner dimensions differ: {list(xt.shape)} @ {list(wt.shape)}")
        config = a.get("compute_kernel_config")
        kernel = (numerics.fidelity_name(config, MATMUL_DEFAULT_FIDELITY), numerics.fp32_acc(config))
        if dev.skip_matmul_math:  # shape-only recording for the cost model
            out = torch.zeros(*torch.broadcast_shapes(xt.shape[:-2], wt.shape[:-2]), xt.shape[-2], wt.shape[-1])
        else:
            out = numerics.card_matmul(xt, wt, fidelity=kernel[0], fp32_dest=kernel[1],
                                       x_fp32=_is_fp32(dev, x), w_fp32=_is_fp32(dev, w))
        bias = torch_of(dev, a.get("bias"), name)
        if bias is not None:
            out = numerics.round_dest(out + bias.reshape(-1, bias.shape[-1])[0], kernel[1])
        activation = _fused_activation(a)
        if activation is not None:
            out = _ACTIVATION_GOLDEN(dev)(activation)(out)
        while out.dim() > xt.dim():
            out = out.squeeze(0)
        return _finish(dev, name, out, x, a, 2 * out.numel() * xt.shape[-1], inputs=[x, w], kernel=kernel)

    return op


def _fused_activation(a: Dict[str, Any]) -> Any:
    program_config = a.get("program_config")
    fused = getattr(program_config, "fused_activation", None) if program_config is not None else None
    return fused.op_type if fused else a.get("activation")


def _ACTIVATION_GOLDEN(dev: Any) -> Callable:
    """ttnn's own golden lookup for a fused activation name (what its linear golden uses)."""
    return _golden(dev, "linear").__globals__["get_golden_function_for_activation"]


def _is_fp32(dev: Any, tensor: Any) -> bool:
    return isinstance(tensor, dev.ttnn.Tensor) and tensor.dtype == dev.ttnn.float32


def _binary(name: str) -> Callable:
    def op(dev: Any, a: Dict[str, Any]) -> Any:
        x, y = a["input_tensor_a"], a["input_tensor_b"]
        ref = x if isinstance(x, dev.ttnn.Tensor) else y
        extra = _kw(a, "activations", "input_tensor_a_activations", "input_tensor_b_activations")
        xt, yt = torch_of(dev, x, name), torch_of(dev, y, name)
        kernel = None
        if name in ("multiply", "mul") and not extra and isinstance(xt, torch.Tensor) and isinstance(yt, torch.Tensor):
            # FPU eltwise multiply: ttnn.multiply takes no kernel config; tt-metal's eltwise binary
            # program runs it at HiFi4 with fp32 Dest only for fp32 inputs.
            kernel = (ELTWISE_FIDELITY, _is_fp32(dev, x) or _is_fp32(dev, y))
            out = numerics.card_multiply(xt, yt, fidelity=kernel[0], fp32_dest=kernel[1],
                                         a_fp32=_is_fp32(dev, x), b_fp32=_is_fp32(dev, y))
        else:
            out = _golden(dev, name)(xt, yt, **extra)
        return _finish(dev, name, out, ref, a, out.numel(), inputs=[x, y], kernel=kernel)

    return op


def _unary(name: str, *golden_kwargs: str) -> Callable:
    def op(dev: Any, a: Dict[str, Any]) -> Any:
        t = a["input_tensor"]
        out = _golden(dev, name)(torch_of(dev, t, name), **_kw(a, *golden_kwargs))
        return _finish(dev, name, out, t, a, out.numel())

    return op


def _reduction(name: str) -> Callable:
    def op(dev: Any, a: Dict[str, Any]) -> Any:
        t = a["input_tensor"]
        x = torch_of(dev, t, name)
        config = a.get("compute_kernel_config")
        kernel = (numerics.fidelity_name(config, REDUCE_DEFAULT_FIDELITY), numerics.fp32_acc(config))
        dim = a["dim"] if a["dim"] is not None else tuple(range(x.dim()))
        count = math_prod([x.shape[d] for d in ((dim,) if isinstance(dim, int) else dim)])
        scaler = float(a.get("scalar") or 1.0) / (count if name == "mean" else 1)
        out = numerics.card_reduce_sum(x, dim, bool(a["keepdim"]), scaler=scaler, fidelity=kernel[0],
                                       fp32_dest=kernel[1], x_fp32=_is_fp32(dev, t))
        return _finish(dev, name, out, t, a, t.logical_volume(), kernel=kernel)

    return op


def op_softmax(dev: Any, a: Dict[str, Any]) -> Any:
    t = a["input_tensor"]
    out = _golden(dev, "softmax")(torch_of(dev, t, "softmax"), -1 if a["dim"] is None else a["dim"])
    return _finish(dev, "softmax", out, t, a, out.numel())


def _norm(name: str) -> Callable:
    def op(dev: Any, a: Dict[str, Any]) -> Any:
        t = a["input_tensor"]
        x = torch_of(dev, t, name)
        width = x.shape[-1]
        # weights stored as [1, W], [1, 1, 1, W] or [W/32, 32] rows all mean one value per column
        weight, bias = (torch_of(dev, a.get(k), name) for k in ("weight", "bias"))
        weight, bias = (v.reshape(-1)[:width] if v is not None and v.numel() == width else v for v in (weight, bias))
        kwargs = dict(epsilon=a["epsilon"], weight=weight, bias=bias,
                      residual_input_tensor=torch_of(dev, a.get("residual_input_tensor"), name))
        out = _golden(dev, name)(x, **kwargs)
        return _finish(dev, name, out, t, a, out.numel())

    return op


# -- device control ------------------------------------------------------------------------------
def op_begin_trace_capture(dev: Any, a: Dict[str, Any]) -> int:
    return dev.begin_capture(a.get("cq_id"))


def op_end_trace_capture(dev: Any, a: Dict[str, Any]) -> None:
    dev.end_capture(a["trace_id"], a.get("cq_id"))


def op_execute_trace(dev: Any, a: Dict[str, Any]) -> None:
    dev.execute(a["trace_id"], a.get("cq_id"))


def op_release_trace(dev: Any, a: Dict[str, Any]) -> None:
    dev.release(a["trace_id"])


def op_synchronize_device(dev: Any, a: Dict[str, Any]) -> None:
    dev._check_cq(a.get("cq_id"))


def op_close_device(dev: Any, a: Dict[str, Any]) -> None:
    dev.close()


def op_table() -> Dict[str, Callable]:
    """Qualified ttnn name -> emulation function."""
    from pi0_ttnn_node.ttnn_backend import emulated_attention_ops as attention

    table: Dict[str, Callable] = {
        "from_torch": op_from_torch, "as_tensor": op_as_tensor, "to_torch": op_to_torch, "to_device": op_to_device,
        "from_device": op_from_device, "copy_host_to_device_tensor": op_copy_host_to_device_tensor,
        "deallocate": op_deallocate, "to_layout": op_to_layout, "to_memory_config": op_to_memory_config,
        "typecast": op_typecast, "clone": op_clone, "copy": op_copy, "reshape": op_reshape, "permute": op_permute,
        "slice": op_slice, "concat": op_concat, "pad": op_pad, "repeat": op_repeat, "embedding": op_embedding,
        "linear": _matmul("linear"), "matmul": _matmul("matmul"), "softmax": op_softmax,
        "rms_norm": _norm("rms_norm"), "layer_norm": _norm("layer_norm"), "mean": _reduction("mean"),
        "sum": _reduction("sum"), "pow": _binary_pow(), "mac": op_mac,
        "experimental.nlp_create_qkv_heads": attention.op_nlp_create_qkv_heads,
        "experimental.nlp_concat_heads": attention.op_nlp_concat_heads,
        "experimental.rotary_embedding": attention.op_rotary_embedding,
        "transformer.scaled_dot_product_attention": attention.op_sdpa,
        "begin_trace_capture": op_begin_trace_capture, "end_trace_capture": op_end_trace_capture,
        "execute_trace": op_execute_trace, "release_trace": op_release_trace,
        "synchronize_device": op_synchronize_device, "close_device": op_close_device,
    }
    for name in ("add", "subtract", "multiply", "mul", "divide"):
        table[name] = _binary(name)
    for name in ("silu", "sin", "cos", "reciprocal", "neg"):
        table[name] = _unary(name)
    for name in ("exp", "rsqrt", "sqrt"):
        table[name] = _unary(name, "fast_and_approximate_mode")
    table["gelu"] = _unary("gelu", "variant", "fast_and_approximate_mode")
    for name in ("zeros", "ones", "full", "arange", "zeros_like", "ones_like"):
        table[name] = _creation(name)
    table.update(_model_ops())
    return table


def _binary_pow() -> Callable:
    def op(dev: Any, a: Dict[str, Any]) -> Any:
        base, exponent = a["input_tensor"], a["exponent"]
        ref = base if isinstance(base, dev.ttnn.Tensor) else exponent
        out = _golden(dev, "pow")(torch_of(dev, base, "pow"), torch_of(dev, exponent, "pow"))
        return _finish(dev, "pow", out, ref, a, out.numel(), inputs=[base, exponent])

    return op


def op_mac(dev: Any, a: Dict[str, Any]) -> Any:
    x, y, z = a["input_tensor_a"], a["input_tensor_b"], a["input_tensor_c"]
    out = _golden(dev, "mac")(*torch_of(dev, [x, y, z], "mac"))
    return _finish(dev, "mac", out, x, a, 2 * out.numel(), inputs=[x, y, z])


def supported_ops() -> List[str]:
    """Names of the emulated ttnn ops, for docs and the report."""
    return sorted(op_table())


# -- ops PI0ModelTTNN's performance techniques call (in-place cache, fused GeGLU, CQ events) -----
class EmulatedEvent(tuple):
    """(device, cq_id) of ttnn.record_event: a tuple, so the device is seen in wait_for_event."""


def op_fill_cache(dev: Any, a: Dict[str, Any]) -> Any:
    """Write input [1, H, S, D] into rows [update_idx, update_idx + S) of batch row batch_idx."""
    name, cache, x = "fill_cache", a["cache_tensor"], a["input_tensor"]
    value = torch_of(dev, x, name)
    if not dev.is_device_tensor(cache) or cache._deallocated:
        raise RuntimeError(f"ttnn.{name}: the cache must be an allocated device tensor")
    current = dev.originals["to_torch"](cache._host).to(torch.float32)  # partial write: no stale check
    b, start = int(a["batch_idx"]), int(a.get("update_idx") or 0)
    if (value.dim() != 4 or current.dim() != 4 or value.shape[0] != 1 or start % TILE
            or not 0 <= b < current.shape[0] or start + value.shape[-2] > current.shape[-2]
            or value.shape[1] != current.shape[1] or value.shape[-1] != current.shape[-1]
            or cache.layout != dev.ttnn.TILE_LAYOUT):
        raise RuntimeError(f"ttnn.{name}: input {list(value.shape)} does not fit cache {list(current.shape)} at "
                           f"batch {b}, row {start} (TILE, [1, H, S, D] into [B, H, L, D], row a multiple of {TILE})")
    current[b:b + 1, :, start:start + value.shape[-2], :] = value
    dev.count(name, 0, _signature([cache, x], dev))
    dev.record_op(name, [x], [cache], 0)
    cache._host = dev.originals["from_torch"](current.contiguous(), dtype=cache.dtype, layout=cache.layout)
    return cache


def op_record_event(dev: Any, a: Dict[str, Any]) -> Any:
    dev._check_cq(a.get("cq_id"))
    return EmulatedEvent((dev, int(a.get("cq_id") or 0)))


def op_wait_for_event(dev: Any, a: Dict[str, Any]) -> None:
    dev._check_cq(a.get("cq_id"))
    event = a["mesh_event"]
    if not isinstance(event, EmulatedEvent) or event[0] is not dev:
        raise RuntimeError("ttnn.wait_for_event: the event was not recorded on this device (ttnn.record_event)")


def _model_ops() -> Dict[str, Callable]:
    return {"fill_cache": op_fill_cache, "geglu": _unary("geglu", "dim", "variant"),
            "record_event": op_record_event, "wait_for_event": op_wait_for_event}
