"""bag_tools: bags the project writes are read back by rosbags field for field, in both storages."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from pi0_ttnn_node import bag_tools as bt
from pi0_ttnn_node.image_conversion import compressed_image_to_rgb

T0 = bt.DEMO_START_NS


def _read_all(path):
    """Plain rosbags AnyReader (not our wrapper): what any rosbags user would see."""
    from pathlib import Path

    with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        return [(c.topic, c.msgtype, t, reader.deserialize(raw, c.msgtype))
                for c, t, raw in reader.messages()]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_written_bag_round_trips_every_field_of_each_message_type(tmp_path, storage, distro):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (16, 1, 3))
    traj = rng.normal(size=(4, 2))
    with bt.BagBuilder(tmp_path / "b", storage, distro) as bag:
        bag.add_image("/rgb", T0 + 5, rgb, "rgb8", "cam_rgb", log_time_ns=T0 + 7)
        bag.add_image("/bgr", T0 + 10**9 + 1, rgb, "bgr8", "cam_bgr")
        bag.add_compressed("/png", T0 + 20, rgb, "png", "cam_png", log_time_ns=T0 + 21)
        bag.add_compressed("/jpeg", T0 + 30, smooth, "jpeg", "cam_jpeg", log_time_ns=T0 + 31)
        bag.add_joint_state("/js", T0 + 40, ["b", "a"], [1.5, -2.25], [0.1, 0.2], [3.0, 4.0],
                            log_time_ns=T0 + 41)
        bag.add_string("/text", T0 + 50, "pick up the cube")
        bag.add_trajectory("/traj", T0 + 60, T0 + 55, ["a", "b"], traj, 0.02)
    msgs = {topic: (msgtype, t, m) for topic, msgtype, t, m in _read_all(tmp_path / "b")}
    assert set(msgs) == {"/rgb", "/bgr", "/png", "/jpeg", "/js", "/text", "/traj"}

    ty, t, m = msgs["/rgb"]
    assert (ty, t, m.header.stamp.sec, m.header.stamp.nanosec) == (bt.IMAGE, T0 + 7,
                                                                    1_700_000_000, 5)
    assert (m.header.frame_id, m.height, m.width, m.encoding, m.is_bigendian, m.step) == \
        ("cam_rgb", 6, 5, "rgb8", 0, 15)
    np.testing.assert_array_equal(m.data.reshape(6, 5, 3), rgb)
    ty, t, m = msgs["/bgr"]
    assert t == T0 + 10**9 + 1 and m.header.stamp.sec == 1_700_000_001 and m.encoding == "bgr8"
    np.testing.assert_array_equal(m.data.reshape(6, 5, 3)[:, :, ::-1], rgb)
    ty, t, m = msgs["/png"]
    assert (ty, t, m.header.frame_id, m.format) == (bt.COMPRESSED, T0 + 21, "cam_png",
                                                    "rgb8; png compressed bgr8")
    np.testing.assert_array_equal(compressed_image_to_rgb(m.format, m.data), rgb)  # lossless
    ty, t, m = msgs["/jpeg"]
    assert "jpeg" in m.format and m.header.stamp.nanosec == 30
    decoded = compressed_image_to_rgb(m.format, m.data)
    assert decoded.shape == smooth.shape and np.abs(decoded.astype(int) - smooth).max() <= 8
    ty, t, m = msgs["/js"]
    assert (ty, t, list(m.name)) == (bt.JOINT_STATE, T0 + 41, ["b", "a"])
    np.testing.assert_array_equal(m.position, [1.5, -2.25])
    np.testing.assert_array_equal(m.velocity, [0.1, 0.2])
    np.testing.assert_array_equal(m.effort, [3.0, 4.0])
    ty, t, m = msgs["/text"]
    assert (ty, t, m.data) == (bt.STRING, T0 + 50, "pick up the cube")
    ty, t, m = msgs["/traj"]
    assert (ty, t, m.header.stamp.nanosec, list(m.joint_names)) == (bt.TRAJECTORY, T0 + 60, 55,
                                                                     ["a", "b"])
    np.testing.assert_array_equal(np.stack([p.positions for p in m.points]), traj)
    assert [p.time_from_start.nanosec for p in m.points] == [0, 20_000_000, 40_000_000,
                                                             60_000_000]


def test_instruction_is_recorded_latched_and_sensors_are_not(tmp_path):
    bt.make_demo_bag(tmp_path / "d", 0.2, image_size=(32, 24))
    with bt.BagReader(tmp_path / "d") as bag:
        latched = {c.topic: bt.is_latched(c) for c in bag.reader.connections}
    assert latched.pop(bt.DEMO_INSTRUCTION_TOPIC) is True
    assert not any(latched.values())


@pytest.mark.parametrize("transport,storage", [("raw", "sqlite3"), ("compressed", "mcap")])
def test_demo_bag_has_realistic_rates_and_is_deterministic(tmp_path, transport, storage):
    kw = dict(seconds=1.0, transport=transport, storage=storage, image_size=(64, 48), seed=3)
    bt.make_demo_bag(tmp_path / "a", **kw)
    bt.make_demo_bag(tmp_path / "b", **kw)
    suffix = "/compressed" if transport == "compressed" else ""
    with bt.BagReader(tmp_path / "a") as bag:
        counts = bag.counts()
        assert counts[f"/cam_high/image_raw{suffix}"] == 15
        assert counts["/joint_states"] == 100 and counts[bt.DEMO_INSTRUCTION_TOPIC] == 1
        assert bag.start_ns == T0
        js = [m for m in bag.messages(["/joint_states"])]
        assert [tuple(m.msg.name) for m in js[:1]] == [bt.DEMO_JOINTS]
        stamps = [m.msg.header.stamp.nanosec for m in js[:3]]
        assert stamps == [0, 10_000_000, 20_000_000]
        assert js[0].log_time_ns == T0 + 500_000  # receipt trails capture
    a, b = _read_all(tmp_path / "a"), _read_all(tmp_path / "b")
    assert len(a) == len(b)
    for (ta, _, sa, ma), (tb, _, sb, mb) in zip(a, b):
        assert (ta, sa) == (tb, sb)
        if hasattr(ma, "data") and not isinstance(ma.data, str):
            np.testing.assert_array_equal(ma.data, mb.data)


def test_shuffled_demo_joints_are_alphabetical_with_an_extra_joint(tmp_path):
    bt.make_demo_bag(tmp_path / "d", 0.1, image_size=(32, 24), shuffle_joints=True)
    with bt.BagReader(tmp_path / "d") as bag:
        m = next(bag.messages(["/joint_states"])).msg
    assert list(m.name) == sorted(bt.DEMO_JOINTS + ("head_pan",))
    expected = bt.demo_joint_positions(np.array([0.0]))[0]
    assert m.position[list(m.name).index("joint_3")] == expected[2]


def test_reader_names_every_topic_when_one_is_missing(tmp_path):
    bt.make_demo_bag(tmp_path / "d", 0.2, image_size=(32, 24))
    with bt.BagReader(tmp_path / "d") as bag, pytest.raises(bt.BagTopicError) as err:
        bag.require({"/cam_top/image_raw": (bt.IMAGE,)})
    assert "/cam_top/image_raw" in str(err.value) and "/joint_states" in str(err.value)
    assert err.value.exit_code == 4


def test_reader_refuses_a_topic_of_the_wrong_type(tmp_path):
    bt.make_demo_bag(tmp_path / "d", 0.2, image_size=(32, 24))
    with bt.BagReader(tmp_path / "d") as bag, pytest.raises(bt.BagTypeError) as err:
        bag.require({"/joint_states": (bt.IMAGE,)})
    assert "sensor_msgs/msg/JointState" in str(err.value) and err.value.exit_code == 5


def test_reader_refuses_an_empty_bag_and_an_empty_topic(tmp_path):
    with bt.BagBuilder(tmp_path / "e", "mcap"):
        pass
    with bt.BagReader(tmp_path / "e") as bag, pytest.raises(bt.BagEmptyError) as err:
        bag.require({"/joint_states": ()})
    assert "no messages" in str(err.value) and err.value.exit_code == 6


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_reader_turns_a_corrupt_file_into_a_bag_open_error(tmp_path, storage, damage):
    path = bt.make_demo_bag(tmp_path / "c", 0.3, storage=storage, image_size=(32, 24))
    data_file = next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x13" * 4096)
    with pytest.raises(bt.BagOpenError) as err:
        with bt.BagReader(path) as bag:
            list(bag.messages(list(bag.topics())))
    assert str(path) in str(err.value) and err.value.exit_code == 3


def test_reader_explains_a_path_that_is_not_a_bag(tmp_path):
    with pytest.raises(bt.BagOpenError, match="does not exist"):
        bt.BagReader(tmp_path / "nope")
    (tmp_path / "dir").mkdir()
    with pytest.raises(bt.BagOpenError, match="no metadata.yaml"):
        bt.BagReader(tmp_path / "dir")


def test_reader_accepts_the_data_file_inside_a_bag(tmp_path):
    path = bt.make_demo_bag(tmp_path / "d", 0.1, image_size=(32, 24))
    with bt.BagReader(next(path.glob("*.mcap"))) as bag:
        assert bag.path == path and bag.storage == "mcap"


def test_builder_refuses_to_overwrite_an_existing_bag(tmp_path):
    bt.make_demo_bag(tmp_path / "d", 0.1, image_size=(32, 24))
    with pytest.raises(bt.BagOpenError, match="exists"):
        bt.make_demo_bag(tmp_path / "d", 0.1, image_size=(32, 24))
