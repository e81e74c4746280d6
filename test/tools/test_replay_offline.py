"""pi0-replay offline: the node's core rebuilds observations at control ticks from bag time.

Runs the embedded tiny checkpoint with 2 Euler steps on 64x48 frames so each replay takes seconds.
A/B uses the TTNN backend on its CPU emulation when it is installed, else Torch bfloat16.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pi0_ttnn_node import bag_tools as bt
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.tools import replay

FAST = ["--num-steps", "2", "--no-progress", "--warmup", "0"]
HAS_TTNN = importlib.util.find_spec("pi0_ttnn_node.ttnn_backend.backend") is not None and \
    importlib.util.find_spec("ttnn") is not None
B_SIDE = ["--backend-b", "ttnn", "--ttnn-emulate"] if HAS_TTNN else \
    ["--backend-b", "torch", "--torch-dtype-b", "bfloat16"]


@pytest.fixture(scope="module")
def demo_bag(tmp_path_factory):
    return bt.make_demo_bag(tmp_path_factory.mktemp("bags") / "demo", 1.2, image_size=(64, 48),
                            transport="compressed", storage="sqlite3")


# the random demo model's first actions are far from the bag's joint states: limits wide enough
# that the node (and so replay, which applies the node's limits) accepts its chunks
WIDE_LIMITS = """pi0_ttnn_node:
  ros__parameters:
    limits: {position_lower: [-10.0, -10.0, -10.0, -10.0, -10.0, -10.0, -10.0],
             position_upper: [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0],
             max_velocity: [100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0],
             max_start_jump: 100.0}
"""


def _run(bag, out, *extra):
    wide = Path(str(out) + "_limits.yaml")
    wide.write_text(WIDE_LIMITS)
    code = replay.main([str(bag), "--out", str(out), *FAST, "--params-file", str(wide), *extra])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() \
        else None
    return code, report


def _chunks(out):
    with bt.BagReader(out / "action_chunks") as bag:
        return [(m.topic, m.log_time_ns, m.msg) for m in bag.messages(list(bag.topics()))]


def _primary_stamps(bag_path):
    with bt.BagReader(bag_path) as bag:
        return {m.msg.header.stamp.sec * 10**9 + m.msg.header.stamp.nanosec
                for m in bag.messages(["/cam_high/image_raw/compressed"])}


def test_torch_replay_writes_chunk_bag_report_and_plots_on_the_nodes_schedule(demo_bag, tmp_path):
    code, report = _run(demo_bag, tmp_path / "out")
    assert code == 0
    ticks = report["ticks"]
    assert ticks["total"] == 60  # 1.2 s of bag at 50 Hz (first message to last, inclusive)
    # tick 0 has only the instruction; frames arrive 2 ms later. Then the node's async rule with
    # zero latency and margin 2: a new chunk once 23 of the 25 execute_steps have played.
    assert ticks["skipped_by_reason"] == {"camera_missing": 1}
    assert ticks["inference_ticks"] == [1, 24, 47]
    lat = report["backends"]["a"]["latency_ms"]
    assert lat["count"] == 3 and 0 < lat["p50"] <= lat["p95"] <= lat["max"] < 60_000
    assert report["throughput"]["ticks_per_s"] > 0
    assert report["inputs"]["action_joints"] == list(bt.DEMO_JOINTS[:7])
    chunks = _chunks(tmp_path / "out")
    assert len(chunks) == 3 and {c[0] for c in chunks} == {"/pi0_ttnn_node/action_chunk"}
    stamps = _primary_stamps(demo_bag)
    for topic, log_ns, msg in chunks:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert stamp in stamps and stamp <= log_ns  # the observation's own camera stamp
        assert list(msg.joint_names) == list(bt.DEMO_JOINTS[:7]) and len(msg.points) == 50
        assert [p.time_from_start.nanosec for p in msg.points[:3]] == [0, 20_000_000, 40_000_000]
        assert np.isfinite(np.stack([p.positions for p in msg.points])).all()
    for name in ("actions.png", "latency.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not (tmp_path / "out" / "divergence.png").exists()


def test_ab_replay_reports_sane_divergence_between_backends(demo_bag, tmp_path):
    code, report = _run(demo_bag, tmp_path / "ab", *B_SIDE, "--max-inferences", "2",
                        "--threshold", "1e-9")
    assert code == 0
    assert report["backends"]["b"]["label"] == ("ttnn/0/emulated" if HAS_TTNN else
                                                "torch/cpu/bfloat16")
    assert report["backends"]["b"]["latency_ms"]["count"] == 2
    div = report["divergence"]
    assert div["compared_ticks"] == 2 and set(div["per_joint"]) == set(bt.DEMO_JOINTS[:7])
    assert 0.99 < div["pcc"] <= 1.0 and 0 < div["max_abs_diff"] < 0.5
    assert 0 < div["mean_abs_diff"] <= div["max_abs_diff"]
    for joint in div["per_joint"].values():
        assert joint["pcc"] > 0.98 and joint["mean_abs_diff"] <= joint["max_abs_diff"]
    assert div["first_divergent_tick"]["tick"] == 1  # any difference exceeds 1e-9
    topics = {c[0] for c in _chunks(tmp_path / "ab")}
    assert topics == {"/pi0_ttnn_node/action_chunk", "/pi0_ttnn_node_b/action_chunk"}
    assert (tmp_path / "ab" / "divergence.png").read_bytes()[:4] == b"\x89PNG"


def test_same_bag_and_seed_give_identical_actions_and_another_seed_does_not(demo_bag, tmp_path):
    reports = [_run(demo_bag, tmp_path / name, "--seed", seed, "--no-plots")[1]
               for name, seed in (("r1", "7"), ("r2", "7"), ("r3", "8"))]
    digests = [r["backends"]["a"]["actions_sha256"] for r in reports]
    assert digests[0] == digests[1] != digests[2]
    first = [np.stack([p.positions for p in m.points]) for _, _, m in _chunks(tmp_path / "r1")]
    second = [np.stack([p.positions for p in m.points]) for _, _, m in _chunks(tmp_path / "r2")]
    assert len(first) == 3 and all(np.array_equal(a, b) for a, b in zip(first, second))


def test_joint_states_are_merged_by_name_whatever_the_message_order(tmp_path):
    kw = dict(seconds=0.5, image_size=(64, 48))
    plain = bt.make_demo_bag(tmp_path / "plain", **kw)
    shuffled = bt.make_demo_bag(tmp_path / "shuffled", shuffle_joints=True, **kw)
    joints = ["--state-joints", *bt.DEMO_JOINTS, "--no-plots"]
    a = _run(plain, tmp_path / "a", *joints)[1]
    b = _run(shuffled, tmp_path / "b", *joints)[1]
    assert a["ticks"]["inference"] == 2
    assert a["backends"]["a"]["actions_sha256"] == b["backends"]["a"]["actions_sha256"]


def test_params_file_sets_rate_topics_and_joints_like_the_node(demo_bag, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "pi0_ttnn_node:\n  ros__parameters:\n    control_rate_hz: 10.0\n"
        "    cameras:\n      names: [base_0_rgb]\n      topics: [cam_high/image_raw/compressed]\n"
        "      required: [true]\n"
        f"    state:\n      joint_names: {list(bt.DEMO_JOINTS)}\n"
        f"    action:\n      joint_names: [joint_2, joint_1]\n      dims: [1, 0]\n"
        "    limits:\n      position_lower: [-10.0, -10.0]\n      position_upper: [10.0, 10.0]\n"
        "      max_velocity: [100.0, 100.0]\n"
        "    schedule:\n      execute_steps: 5\n")
    code, report = _run(demo_bag, tmp_path / "p", "--params-file", str(params), "--no-plots")
    assert code == 0 and report["ticks"]["total"] == 12 and report["control_rate_hz"] == 10.0
    assert [c["name"] for c in report["inputs"]["cameras"]] == ["base_0_rgb"]
    assert report["inputs"]["action_joints"] == ["joint_2", "joint_1"]
    msg = _chunks(tmp_path / "p")[0][2]
    assert list(msg.joint_names) == ["joint_2", "joint_1"]
    assert msg.points[1].time_from_start.nanosec == 100_000_000


def test_replay_reads_the_nodes_table_and_params_files_without_a_copy(tmp_path):
    from pi0_ttnn_node.control import parameters
    from pi0_ttnn_node.tools import replay_inputs

    assert not hasattr(replay_inputs, "NODE_DEFAULTS")  # no second table of defaults
    extra = tmp_path / "x.yaml"
    extra.write_text("pi0_ttnn_node:\n  ros__parameters:\n    merge: {mode: rtc}\n")
    values = replay_inputs.replay_values([str(extra)], "pi0_ttnn_node", {"control_rate_hz": 10.0})
    assert set(values) == set(parameters.SPECS)
    shipped = parameters.load_params_file(parameters.shipped_params_file())
    assert values["limits.max_velocity"] == shipped["limits.max_velocity"]
    assert values["merge.mode"] == "rtc" and values["control_rate_hz"] == 10.0
    extra.write_text("pi0_ttnn_node:\n  ros__parameters:\n    merge: {mdoe: rtc}\n")
    with pytest.raises(ConfigError, match="merge.mdoe"):
        replay_inputs.replay_values([str(extra)], "pi0_ttnn_node", {})


def test_replay_without_any_buildable_observation_writes_the_report_and_exits_8(demo_bag,
                                                                                  tmp_path):
    joints = ["--state-joints", *bt.DEMO_JOINTS[:7], "elbow_extra"]  # never published
    code, report = _run(demo_bag, tmp_path / "none", *joints, "--no-plots")
    assert code == replay.EXIT_NO_INFERENCE == 8
    assert report["ticks"]["inference"] == 0
    assert report["ticks"]["skipped_by_reason"]["missing_joints"] == 59


def test_missing_topic_exits_4_and_lists_the_bags_topics(demo_bag, tmp_path, capsys):
    code, _ = _run(demo_bag, tmp_path / "x", "--camera", "base_0_rgb=/cam_top/image_raw")
    err = capsys.readouterr().err
    assert code == 4 and "BagTopicError" in err and "/cam_top/image_raw" in err
    assert "/cam_high/image_raw/compressed" in err and "/joint_states" in err


def test_bag_without_instruction_exits_4_unless_a_default_is_given(tmp_path, capsys):
    with bt.BagBuilder(tmp_path / "b", "mcap") as bag:
        for i in range(30):
            t = bt.DEMO_START_NS + i * 20_000_000
            bag.add_image("/cam_high/image_raw", t, np.zeros((48, 64, 3), np.uint8))
            bag.add_joint_state("/joint_states", t, bt.DEMO_JOINTS, np.zeros(8))
    no_default = tmp_path / "no_default.yaml"  # the shipped params file sets a default text
    no_default.write_text('pi0_ttnn_node:\n  ros__parameters:\n    instruction: {default: ""}\n')
    assert _run(tmp_path / "b", tmp_path / "x", "--params-file", str(no_default))[0] == 4
    assert "--instruction" in capsys.readouterr().err
    code, report = _run(tmp_path / "b", tmp_path / "y", "--instruction", "wave", "--no-plots")
    assert code == 0 and report["inputs"]["instruction_topic"] is None


def test_unknown_message_type_on_a_camera_topic_exits_5(tmp_path, capsys):
    from rosbags.typesys import get_types_from_msg

    with bt.BagBuilder(tmp_path / "b", "mcap") as bag:
        bag.typestore.register(get_types_from_msg("uint32 width\nuint8[] pixels",
                                                  "acme_msgs/msg/Frame"))
        frame = bag.typestore.types["acme_msgs/msg/Frame"](width=2, pixels=np.zeros(4, np.uint8))
        bag.write("/cam_high/image_raw", "acme_msgs/msg/Frame", bt.DEMO_START_NS, frame)
        bag.add_joint_state("/joint_states", bt.DEMO_START_NS, bt.DEMO_JOINTS, np.zeros(8))
        bag.add_string(bt.DEMO_INSTRUCTION_TOPIC, bt.DEMO_START_NS, "wave")
    code, _ = _run(tmp_path / "b", tmp_path / "x")
    err = capsys.readouterr().err
    assert code == 5 and "BagTypeError" in err and "acme_msgs/msg/Frame" in err


def test_empty_bag_exits_6(tmp_path, capsys):
    with bt.BagBuilder(tmp_path / "e", "sqlite3"):
        pass
    assert _run(tmp_path / "e", tmp_path / "x")[0] == 6
    assert "no messages" in capsys.readouterr().err


def test_corrupt_bag_exits_3(demo_bag, tmp_path, capsys):
    import shutil

    broken = Path(shutil.copytree(demo_bag, tmp_path / "broken"))
    db = next(broken.glob("*.db3"))
    db.write_bytes(db.read_bytes()[:4096])
    assert _run(broken, tmp_path / "x")[0] == 3
    assert "corrupt" in capsys.readouterr().err


def test_existing_output_is_kept_unless_overwrite_is_given(demo_bag, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "report.json").write_text("{}")
    assert _run(demo_bag, tmp_path / "o", "--max-inferences", "1")[0] == 7
    assert "--overwrite" in capsys.readouterr().err
    code, report = _run(demo_bag, tmp_path / "o", "--max-inferences", "1", "--overwrite")
    assert code == 0 and report["ticks"]["inference"] == 1
