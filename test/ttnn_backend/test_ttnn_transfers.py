"""Host<->device transfers and matmul coverage of one sample_actions call.

What counts as a transfer: every call of ttnn.from_torch / as_tensor with a device, to_device,
copy_host_to_device_tensor (uploads) and to_torch / from_device of a device tensor (downloads).
Contract: exactly len(UPLOAD_FIELDS) uploads (one fewer for PI0.5, which has no state input), all
before the first device op; none while vision, prefill and the denoise loop run; one download.
Counted by wrapping the ttnn functions, so the same test runs on a card.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List

import pytest
from conftest import reference, runtime_config, ttnn
from pi0_ttnn_node.embedded import adversarial_inputs

from pi0_ttnn_node.tools.ttnn_counts import ALL_OFF

from pi0_ttnn_node.ttnn_backend.ttnn_accounting import matmul_flops, total_flops
from pi0_ttnn_node.ttnn_backend.ttnn_inputs import UPLOAD_FIELDS
from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

UPLOADS = ("from_torch", "as_tensor", "to_device", "copy_host_to_device_tensor")
DOWNLOADS = ("to_torch", "from_device")


@contextlib.contextmanager
def count_transfers(monkeypatch) -> Iterator[Dict[str, List[str]]]:
    """Record transfer calls (by function name) made through the ttnn module."""
    log: Dict[str, List[str]] = {"up": [], "down": []}

    def wrap(name: str, kind: str):
        original = getattr(ttnn, name)

        def counted(*args, **kwargs):
            if kind == "down" or kwargs.get("device") is not None or name != "from_torch":
                log[kind].append(name)
            return original(*args, **kwargs)

        return counted

    with monkeypatch.context() as m:
        for name in UPLOADS:
            m.setattr(ttnn, name, wrap(name, "up"))
        for name in DOWNLOADS:
            m.setattr(ttnn, name, wrap(name, "down"))
        yield log


def expected_uploads(model_type: str) -> int:
    return len(UPLOAD_FIELDS) - (1 if model_type == "pi05" else 0)


def _args(inputs):
    return {k: v for k, v in inputs.items() if k != "noise"}


MODES = {"eager": dict(), "trace": dict(trace="denoise"),
         "whole-2cq": dict(trace="whole", num_command_queues=2)}


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("mode", list(MODES))
def test_each_call_uploads_once_and_downloads_once(tt, monkeypatch, model_type, mode):
    cfg, sd, _ = reference(model_type, "tiny")
    model = PI0ModelTTNN(cfg, sd, tt.device, runtime_config(tt, **MODES[mode]))
    inputs = adversarial_inputs(cfg)
    try:
        for call in range(3):  # first call (trace: warm-up + capture), then replays
            with count_transfers(monkeypatch) as log:
                model.sample_actions(**_args(inputs), noise=inputs["noise"])
            assert len(log["up"]) == expected_uploads(model_type), (call, log)
            assert log["down"] == ["to_torch"], (call, log)
            if call:  # persistent buffers: later calls write in place, never reallocate
                assert mode == "eager" or set(log["up"]) == {"copy_host_to_device_tensor"}
    finally:
        model.release_trace()


@pytest.mark.parametrize("mode", list(MODES))
def test_no_transfer_while_vision_prefill_and_denoise_loop_run(tt, monkeypatch, mode):
    cfg, sd, _ = reference("pi0", "tiny")
    model = PI0ModelTTNN(cfg, sd, tt.device, runtime_config(tt, **MODES[mode]))
    inputs = adversarial_inputs(cfg)
    steps = cfg.num_inference_steps
    try:
        for call in range(2):
            with count_transfers(monkeypatch) as log:
                staged = model.stage(**_args(inputs), noise=inputs["noise"], num_steps=steps)
            assert len(log["up"]) == expected_uploads("pi0") and not log["down"]
            with count_transfers(monkeypatch) as log:
                if tt.is_emulated:  # the emulation's own counters agree
                    with tt.device.stats.measure() as region:
                        x_0 = model.launch(staged)
                    assert region.uploads == 0 and region.downloads == 0
                    replays = 1 if call and mode != "eager" else 0
                    assert region.trace_replays == replays
                else:
                    x_0 = model.launch(staged)
            assert log == {"up": [], "down": []}
            with count_transfers(monkeypatch) as log:
                model.collect(x_0, staged.batch)
            assert log == {"up": [], "down": ["to_torch"]}
    finally:
        model.release_trace()


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("size", ["tiny", pytest.param("mid", marks=pytest.mark.slow)])
@pytest.mark.parametrize("techniques", ["accurate", "all-off"])
def test_every_matmul_and_attention_flop_runs_as_a_ttnn_op(tt, model_type, size, techniques):
    if not tt.is_emulated:
        pytest.skip("op and FLOP counters exist only in the emulation")
    cfg, sd, _ = reference(model_type, size)
    rc = runtime_config(tt, **(ALL_OFF if techniques == "all-off" else {}))
    model = PI0ModelTTNN(cfg, sd, tt.device, rc)
    inputs = adversarial_inputs(cfg)
    with tt.device.stats.measure() as region:
        model.sample_actions(**_args(inputs), noise=inputs["noise"])
    analytic = matmul_flops(cfg, inputs["lang_tokens"].shape[0], inputs["lang_tokens"].shape[1],
                            cfg.num_inference_steps, rc)
    for stage, kinds in analytic.items():
        print(f"FLOPs {model_type}-{size} {stage:<8} " +
              ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in sorted(kinds.items())))
    print(f"ops {model_type}-{size}: {dict(region.ops.most_common())}")
    assert region.matmul_flops == total_flops(analytic)
    assert region.uploads == expected_uploads(model_type) and region.downloads == 1
