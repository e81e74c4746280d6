"""Process settings for steady ticks: torch threads leave a core, GIL switch interval, gc freeze."""

import gc
import sys

import torch

from pi0_ttnn_node.ros import process_tuning as pt


def test_torch_threads_leave_one_cpu_for_the_executor():
    assert pt.default_torch_threads(1) == 1
    assert pt.default_torch_threads(2) == 1
    assert pt.default_torch_threads(16) == 15
    assert pt.default_torch_threads() == max(1, pt.available_cpus() - 1)


def test_apply_sets_threads_switch_interval_gc_and_freezes():
    saved = (torch.get_num_threads(), sys.getswitchinterval(), gc.get_threshold())
    try:
        tuning = pt.apply_before_load(0)
        assert tuning.torch_threads == torch.get_num_threads() == pt.default_torch_threads()
        assert sys.getswitchinterval() == tuning.switch_interval_s == pt.SWITCH_INTERVAL_S
        assert gc.get_threshold() == pt.GC_THRESHOLDS
        assert pt.apply_before_load(3).torch_threads == torch.get_num_threads() == 3
        frozen = pt.apply_after_configure(tuning)
        assert frozen.gc_frozen == gc.get_freeze_count() > 0
        assert pt.describe(frozen)["process.torch_threads"] == tuning.torch_threads
    finally:
        gc.unfreeze()
        torch.set_num_threads(saved[0])
        sys.setswitchinterval(saved[1])
        gc.set_threshold(*saved[2])
