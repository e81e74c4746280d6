"""A 1,000-tick soak (about 10 s): backend toggles, drops and gaps, and no unsafe command."""

from __future__ import annotations

import numpy as np

from pi0_ttnn_node.control.safety import Limits
from pi0_ttnn_node.tools.soak import Soak, SoakConfig, unsafe_points


def test_unsafe_point_check_catches_nan_out_of_box_and_too_fast_points():
    limits = Limits.create([-1.0], [1.0], [1.0], 0.5)
    times = np.array([0.02, 0.04, 0.06])
    good = np.array([[0.0], [0.02], [0.04]])
    assert unsafe_points(good, np.ones((3, 1)), times, np.zeros(1), limits, 0.0) == 0
    for bad in ([[np.nan], [0.0], [0.0]], [[0.0], [1.5], [1.5]], [[0.0], [0.5], [0.5]]):
        assert unsafe_points(np.array(bad), np.zeros((3, 1)), times, np.zeros(1), limits,
                             0.0) >= 1
    assert unsafe_points(good, np.full((3, 1), 2.0), times, np.zeros(1), limits, 0.0) == 3


def test_short_soak_publishes_nothing_unsafe_and_survives_backend_toggles():
    cfg = SoakConfig(ticks=1000, num_steps=2, toggle_every=300, warmup_ticks=200,
                     camera_outage_p=0.005, joint_gap_p=0.005, instruction_p=0.004)
    rep = Soak(cfg).run()
    assert rep.ticks == 1000
    assert rep.unsafe_commands == 0
    assert rep.inferences >= 20 and rep.chunks_accepted >= 20
    assert rep.published_trajectories > 500
    assert rep.backend_switches == ["bfloat16", "float32", "bfloat16"]
    assert rep.inference_failures == 0
    assert rep.threads_max - rep.threads_min <= 1
    assert sum(rep.holds.values()) > 0  # the injected outages did stop the output
