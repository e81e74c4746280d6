"""JointStateCache: merge by name, configured order, and every refusal (never zero-filled)."""
import math

import numpy as np
import pytest

from pi0_ttnn_node.errors import ConfigError, ObservationRejected
from pi0_ttnn_node.joint_mapping import MAX_SAMPLES_PER_JOINT, JointStateCache

JOINTS = ["a1", "a2", "b1", "b2"]


def _reason(fn, *args):
    with pytest.raises(ObservationRejected) as err:
        fn(*args)
    return err.value


def test_two_sources_are_merged_by_name_into_configured_order():
    cache = JointStateCache(JOINTS)
    assert cache.add(1.00, ["b2", "b1", "gripper_x"], [4.0, 3.0, 99.0]) == 2
    assert cache.add(1.01, ["a2", "a1"], [2.0, 1.0]) == 2
    np.testing.assert_array_equal(cache.lookup(1.02, 0.1), [1.0, 2.0, 3.0, 4.0])


def test_extra_joints_are_ignored_even_when_non_finite():
    cache = JointStateCache(["a1"])
    assert cache.add(1.0, ["a1", "extra"], [0.5, math.nan]) == 1
    np.testing.assert_array_equal(cache.lookup(1.0, 0.1), [0.5])


def test_missing_joints_are_listed_and_never_zero_filled():
    cache = JointStateCache(JOINTS)
    cache.add(1.0, ["a1", "a2"], [1.0, 2.0])
    err = _reason(cache.lookup, 1.0, 0.1)
    assert err.reason == "missing_joints"
    assert "b1" in err.detail and "b2" in err.detail and "a1" not in err.detail


def test_duplicate_names_in_one_message_are_rejected_and_not_stored():
    cache = JointStateCache(["a1"])
    assert _reason(cache.add, 1.0, ["a1", "a1"], [1.0, 2.0]).reason == "duplicate_joints"
    assert _reason(cache.lookup, 1.0, 0.1).reason == "missing_joints"


def test_names_and_positions_length_mismatch_is_rejected():
    cache = JointStateCache(["a1", "a2"])
    assert _reason(cache.add, 1.0, ["a1", "a2"], [1.0]).reason == "length_mismatch"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_position_is_refused_at_input_and_the_other_joints_still_update(bad):
    cache = JointStateCache(["a1", "a2"])
    cache.add(1.0, ["a1", "a2"], [1.0, 2.0])
    err = _reason(cache.add, 1.05, ["a1", "a2"], [bad, 2.5])
    assert err.reason == "nonfinite_state" and "a1" in err.detail and "a2=" not in err.detail
    # a2's new value was stored; a1's refused sample blocks observations until replaced
    assert cache._hist[1].values[-1] == 2.5
    assert _reason(cache.lookup, 1.06, 0.1).reason == "nonfinite_state"
    # before the bad sample the old state is still valid
    np.testing.assert_array_equal(cache.lookup(1.01, 0.1), [1.0, 2.0])
    cache.add(1.07, ["a1", "a2"], [1.1, 2.1])
    np.testing.assert_array_equal(cache.lookup(1.08, 0.1), [1.1, 2.1])


@pytest.mark.parametrize("bad", [1e300, -1e300, 1000.5])
def test_position_beyond_max_abs_position_is_refused_with_its_own_reason(bad):
    cache = JointStateCache(["a1", "a2", "a3"], max_abs_position=1000.0)
    cache.add(1.0, ["a1", "a2", "a3"], [0.1, 0.2, 0.3])
    err = _reason(cache.add, 1.05, ["a3", "a2", "a1"], [0.33, bad, 0.11])
    assert err.reason == "position_out_of_range" and "a2=" in err.detail
    assert "max_abs_position" in str(err)
    assert [h.values[-1] for h in (cache._hist[0], cache._hist[2])] == [0.11, 0.33]
    assert _reason(cache.lookup, 1.06, 0.1).reason == "position_out_of_range"
    cache.add(1.07, ["a2"], [999.0])  # within the bound: accepted, the joint is usable again
    np.testing.assert_array_equal(cache.lookup(1.08, 0.1), [0.11, 999.0, 0.33])


def test_unused_joints_are_not_checked_against_the_bound():
    cache = JointStateCache(["a1"], max_abs_position=1.0)
    assert cache.add(1.0, ["a1", "wheel"], [0.5, 1e300]) == 1


@pytest.mark.parametrize("stamp", [-3.0, -1e-9, math.nan, -math.inf])
def test_negative_or_non_finite_stamps_are_refused_even_with_a_receipt_time(stamp):
    cache = JointStateCache(["a1"])
    assert _reason(cache.add, stamp, ["a1"], [1.0], 5.0).reason == "invalid_stamp"
    assert cache.latest_stamp() is None and cache.zero_stamps == 0


def test_bad_max_abs_position_is_a_configuration_error():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError):
            JointStateCache(["a1"], max_abs_position=bad)


def test_stale_state_is_rejected_with_the_age():
    cache = JointStateCache(["a1"])
    cache.add(1.0, ["a1"], [1.0])
    err = _reason(cache.lookup, 1.5, 0.1)
    assert err.reason == "stale_state" and "a1" in err.detail


def test_lookup_uses_latest_sample_at_or_before_t():
    cache = JointStateCache(["a1"])
    for i in range(5):
        cache.add(1.0 + 0.01 * i, ["a1"], [float(i)])
    assert cache.lookup(1.025, 0.1)[0] == 2.0
    assert cache.lookup(1.02, 0.1)[0] == 2.0
    assert cache.lookup(5.0, 10.0)[0] == 4.0


def test_lookup_before_first_sample_uses_the_earliest_one_only_within_max_age():
    cache = JointStateCache(["a1"])
    cache.add(1.0, ["a1"], [3.0])
    assert cache.lookup(0.95, 0.1)[0] == 3.0
    assert _reason(cache.lookup, 0.8, 0.1).reason == "stale_state"


def test_out_of_order_samples_from_two_sources_are_kept_sorted():
    cache = JointStateCache(["a1"])
    cache.add(1.02, ["a1"], [2.0])
    cache.add(1.00, ["a1"], [0.0])
    cache.add(1.01, ["a1"], [1.0])
    assert [cache.lookup(t, 0.1)[0] for t in (1.005, 1.015, 1.03)] == [0.0, 1.0, 2.0]


def test_history_is_bounded_by_time_and_by_count():
    cache = JointStateCache(["a1"], history_s=0.5, max_abs_position=1e6)
    for i in range(3 * MAX_SAMPLES_PER_JOINT):
        cache.add(1.0 + i * 1e-4, ["a1"], [float(i)])
    assert len(cache._hist[0].stamps) == MAX_SAMPLES_PER_JOINT
    cache.add(10.0, ["a1"], [7.0])
    assert len(cache._hist[0].stamps) == 1


def test_zero_stamp_falls_back_to_receipt_time_or_is_rejected_without_one():
    cache = JointStateCache(["a1"])
    assert _reason(cache.add, 0.0, ["a1"], [1.0]).reason == "zero_stamp"
    cache.add(0.0, ["a1"], [1.0], receipt_time=2.0)
    assert cache.latest_stamp() == 2.0 and cache.zero_stamps == 1


def test_reset_forgets_everything():
    cache = JointStateCache(["a1"])
    cache.add(1.0, ["a1"], [1.0])
    cache.reset()
    assert cache.latest_stamp() is None
    assert _reason(cache.lookup, 1.0, 0.1).reason == "missing_joints"


def test_configuration_errors_are_raised_at_construction():
    with pytest.raises(ConfigError):
        JointStateCache(["a", "a"])
    with pytest.raises(ConfigError):
        JointStateCache([])
    with pytest.raises(ConfigError):
        JointStateCache(["a"], history_s=math.nan)
