"""What each performance technique changes, counted on the CPU emulation (not hardware timing).

For one model (PI0 / PI0.5, embedded tiny or mid size, batch 1) this runs a ladder of TTNN
configurations, from every technique off up to the "fast" preset, and per configuration counts
one steady-state sample_actions call with ttnn_op_log.OpLog: device ops per inference and per
denoise step (every op from the first denoise_step call to the end of the loop, divided by the
steps; captured ops keep that label through replays), host dispatches per inference, bytes read +
written per memory kind, transfers, and the end-to-end PCC against the Torch backend (fp32, same
weights and noise). Used by `bench_ttnn --counts`; docs/ttnn_backend.md holds its output.
Counterpart: none.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Tuple

import torch

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig, resolve_runtime_config

TECHNIQUES = ("precompute_conditioning", "fused_mlp", "fused_rope", "kv_in_place",
              "l1_activations", "matmul_program_configs")
ALL_OFF = {name: False for name in TECHNIQUES}


def ladder(base: TtRuntimeConfig, short: bool = False) -> List[Tuple[str, TtRuntimeConfig, int]]:
    """(label, config, steps): all off, then one technique more per row, then the presets.
    `short` merges the rows that change no op count (placement, program configs, trace, CQs)."""
    device = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)
              if not f.metadata["preset"]}
    rows: List[Tuple[str, TtRuntimeConfig, int]] = []
    knobs: Dict[str, Any] = dict(ALL_OFF)
    rows.append(("all techniques off", resolve_runtime_config("accurate", {**device, **knobs}), 10))
    for name in TECHNIQUES[:4] if short else TECHNIQUES:
        knobs[name] = True
        rows.append((f"+ {name}", resolve_runtime_config("accurate", {**device, **knobs}), 10))
    steps = [("+ trace denoise", {"trace": "denoise"}), ("+ trace whole", {"trace": "whole"}),
             ("+ 2 command queues", {"num_command_queues": 2})]
    if short:
        steps = [("+ L1, program configs, trace whole, 2 CQs",
                  {"l1_activations": True, "matmul_program_configs": True, "trace": "whole",
                   "num_command_queues": 2})]
    for label, extra in steps:
        knobs.update(extra)
        rows.append((label, resolve_runtime_config("accurate", {**device, **knobs}), 10))
    if not short:
        rows.append(("accurate preset", resolve_runtime_config("accurate", device), 10))
    fast = resolve_runtime_config("fast", device)
    rows.append(("fast preset", fast, 10))
    rows.append(("fast preset, 5 steps", fast, 5))
    return rows


def _inputs(cfg: PI0Config) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(3)
    size, lang = cfg.vision.image_size, cfg.tokenizer_max_length
    lang_masks = torch.zeros(1, lang, dtype=torch.bool)
    lang_masks[:, :12] = True
    return dict(images=[torch.rand(1, 3, size, size, generator=gen) * 2 - 1
                        for _ in range(cfg.num_image_slots)],
                img_masks=[torch.ones(1, dtype=torch.bool)] * cfg.num_image_slots,
                lang_tokens=torch.randint(1, cfg.vlm.vocab_size, (1, lang), generator=gen)
                * lang_masks, lang_masks=lang_masks,
                state=None if cfg.is_pi05 else torch.randn(1, cfg.max_state_dim, generator=gen),
                noise=torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=gen))


def count_row(cfg: PI0Config, state_dict: Dict[str, torch.Tensor], rc: TtRuntimeConfig,
              steps: int, expected: Dict[int, torch.Tensor]) -> Dict[str, Any]:
    """Open the emulated device for `rc`, build the model, count one steady-state call."""
    from pi0_ttnn_node.ttnn_backend.runtime import open_tt_device

    x = _inputs(cfg)
    args = {k: v for k, v in x.items() if k != "noise"}
    with open_tt_device(rc) as handle:
        import ttnn

        from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

        model = PI0ModelTTNN(cfg, state_dict, handle.device, rc)
        got, full = steady_call(model, ttnn, args, x["noise"], steps)
    per_step = full.ops_by_stage["loop"] / steps
    pcc_value = pcc(got, expected[steps])
    return {"ops": full.device_ops, "ops_per_step": per_step, "dispatches": full.dispatches,
            "bytes": dict(full.bytes_by_memory), "uploads": full.uploads,
            "downloads": full.downloads, "upload_bytes": full.upload_bytes,
            "trace_replays": full.trace_replays, "pcc": pcc_value}


def steady_call(model: Any, ttnn: Any, args: Dict[str, Any], noise: torch.Tensor, steps: int
                ) -> Tuple[torch.Tensor, Any]:
    """(actions, OpLog summary) of one steady-state call (traced configs: after the capture
    call). Ops are labelled "loop" from the first denoise step to the end of the loop."""
    from pi0_ttnn_node.ttnn_backend.ttnn_op_log import OpLog

    step_fn, run_fn, denoise_fn = model.denoise_step, model.run_device, model.denoise
    rc = model.runtime_config
    try:
        with OpLog(ttnn) as log:

            def labelled(fn: Any, stage: str) -> Any:
                def call(*a: Any, **k: Any) -> Any:
                    log.stage = stage
                    return fn(*a, **k)
                return call

            model.denoise_step = labelled(step_fn, "loop")
            model.run_device = labelled(run_fn, "")
            model.denoise = labelled(denoise_fn, "")
            if rc.use_trace or rc.num_command_queues == 2:  # capture / buffers first
                model.sample_actions(**args, noise=noise, num_steps=steps)
            log.stage = ""
            mark = log.mark()
            got = model.sample_actions(**args, noise=noise, num_steps=steps)
            return got, log.summary(mark)
    finally:
        model.release_trace()
        for name in ("denoise_step", "run_device", "denoise"):
            model.__dict__.pop(name, None)


def pcc(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a = actual.flatten().double() - actual.double().mean()
    b = expected.flatten().double() - expected.double().mean()
    return float(a @ b / (a.norm() * b.norm()))


def technique_table(model_type: str, size: str, base: TtRuntimeConfig, short: bool = False,
                    only: str = "") -> List[Dict[str, Any]]:
    """Every ladder row for one model and size (emulation counts; PCC vs Torch fp32)."""
    from pi0_ttnn_node.embedded import random_state_dict, sized_config
    from pi0_ttnn_node.torch_backend import PI0Model

    cfg = sized_config(model_type, size)
    state_dict = random_state_dict(cfg, 11)
    ref = PI0Model(cfg)
    ref.load_state_dict(state_dict, strict=True)
    ref.eval()
    x = _inputs(cfg)
    args = {k: v for k, v in x.items() if k != "noise"}
    expected = {}
    with torch.no_grad():
        for n in (10, 5):
            expected[n] = ref.sample_actions(**args, noise=x["noise"], num_steps=n)
    rows = []
    for label, rc, steps in ladder(base, short):
        if only and only not in label:
            continue
        row = count_row(cfg, state_dict, rc, steps, expected)
        row.update(model=model_type, size=size, config=label, steps=steps)
        rows.append(row)
    return rows


def format_table(rows: List[Dict[str, Any]]) -> str:
    head = (f"{'model':<6}{'size':<6}{'config':<32}{'ops/inf':>8}{'ops/step':>9}{'disp/inf':>9}"
            f"{'DRAM MB':>9}{'L1 MB':>8}{'up':>4}{'down':>5}{'up KB':>8}{'PCC':>10}")
    lines = [head]
    for r in rows:
        dram = sum(v for k, v in r["bytes"].items() if k.startswith("DRAM")) / 1e6
        l1 = sum(v for k, v in r["bytes"].items() if k.startswith("L1")) / 1e6
        lines.append(f"{r['model']:<6}{r['size']:<6}{r['config']:<32}{r['ops']:>8}"
                     f"{r['ops_per_step']:>9.1f}{r['dispatches']:>9}{dram:>9.1f}{l1:>8.1f}"
                     f"{r['uploads']:>4}{r['downloads']:>5}{r['upload_bytes'] / 1e3:>8.1f}"
                     f"{r['pcc']:>10.6f}")
    return "\n".join(lines)


def format_markdown(rows: List[Dict[str, Any]]) -> str:
    """The same table as markdown (docs/ttnn_backend.md)."""
    lines = ["| model | size | configuration | ops / inference | ops / step | host dispatches | "
             "DRAM MB | L1 MB | uploads / downloads | PCC vs Torch |", "|" + "---|" * 10]
    for r in rows:
        dram = sum(v for k, v in r["bytes"].items() if k.startswith("DRAM")) / 1e6
        l1 = sum(v for k, v in r["bytes"].items() if k.startswith("L1")) / 1e6
        lines.append(f"| {r['model']} | {r['size']} | {r['config']} | {r['ops']} | "
                     f"{r['ops_per_step']:.1f} | {r['dispatches']} | {dram:.1f} | {l1:.1f} | "
                     f"{r['uploads']} / {r['downloads']} | {r['pcc']:.6f} |")
    return "\n".join(lines)


def dump(rows: List[Dict[str, Any]]) -> str:
    return json.dumps(rows)
