"""Live replay over DDS: pi0-bag-play drives the real node under use_sim_time, pi0-bag-record keeps
what it publishes. Node, player and recorder run as subprocesses on loopback, on a DDS domain this
module holds (test/dds_domain.py), so parallel runs never meet.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dds_domain import claim_domain, loopback_env

from pi0_ttnn_node import bag_tools as bt

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]
CAMERA = "/cam_high/image_raw/compressed"
CHUNK_TOPIC = "/pi0_ttnn_node/action_chunk"
NODE_OVERRIDES = f"""pi0_ttnn_node:
  ros__parameters:
    control_rate_hz: 10.0
    policy: {{num_steps: 2, warmup_iterations: 1, noise_seed: 0, torch_threads: 1}}
    cameras: {{names: [base_0_rgb], topics: ["{CAMERA}"], required: [true],
              transports: [compressed]}}
    schedule: {{execute_steps: 5}}
    sync: {{max_image_age_s: 0.5, max_state_age_s: 0.2}}
    limits: {{position_lower: [-10.0, -10.0, -10.0, -10.0, -10.0, -10.0, -10.0],
             position_upper: [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0],
             max_velocity: [100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0],
             max_start_jump: 100.0}}
    safety: {{watchdog_timeout_s: 5.0}}
"""


@pytest.fixture(scope="module")
def ros_env():
    env = loopback_env(claim_domain(61, 100))  # subprocesses get a domain of their own
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def _start(env, args, log):
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc, sig=signal.SIGINT, timeout=15.0):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def _same_cdr(sent: bytes, received: bytes) -> bool:
    """Equal bytes, up to the zero padding to 4-byte alignment the middleware appends."""
    pad = received[len(sent):]
    return received[:len(sent)] == sent and len(pad) < 4 and pad == b"\0" * len(pad)


def _ns(header):
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def test_bag_play_drives_the_node_under_sim_time_and_its_chunks_are_recorded(ros_env, tmp_path):
    bag = bt.make_demo_bag(tmp_path / "in", 3.0, transport="compressed", image_size=(96, 72))
    params = tmp_path / "overrides.yaml"
    params.write_text(NODE_OVERRIDES)
    log = open(tmp_path / "log.txt", "w")
    recorder = _start(ros_env, ["-m", "pi0_ttnn_node.tools.bag_record", str(tmp_path / "out"),
                                "--topics", CHUNK_TOPIC, "--use-sim-time"], log)
    node = _start(ros_env, ["-c", "from pi0_ttnn_node.ros.node import main; main()", "--ros-args",
                            "-p", "use_sim_time:=true", "--params-file",
                            str(REPO / "config" / "pi0_ttnn_node.yaml"), "--params-file",
                            str(params)], log)
    try:
        play = subprocess.run(
            [sys.executable, "-m", "pi0_ttnn_node.tools.bag_play", str(bag), "--rate", "0.5",
             "--clock-hz", "50", "--wait-for-subscriber", CAMERA, "/joint_states",
             bt.DEMO_INSTRUCTION_TOPIC,
             "--wait-timeout", "45", "--delay", "1.0"],
            cwd=REPO, env=ros_env, capture_output=True, text=True, timeout=70)
        assert play.returncode == 0, play.stderr + open(tmp_path / "log.txt").read()
        time.sleep(1.5)  # an inference running when /clock stopped still publishes its chunk
    finally:
        rec_rc = _stop(recorder)
        _stop(node)
        log.close()
    logs = (tmp_path / "log.txt").read_text()
    assert rec_rc == 0, logs
    with bt.BagReader(bag) as src:
        frames = sorted(_ns(m.msg.header) for m in src.messages([CAMERA]))
        start, end = src.start_ns, src.end_ns
    with bt.BagReader(tmp_path / "out") as out:
        chunks = [(m.log_time_ns, m.msg) for m in out.messages([CHUNK_TOPIC])]
    # 3 s of bag = 30 ticks at 10 Hz: at most one inference per tick, and (async) a new chunk
    # at the latest when execute_steps = 5 actions played, i.e. >= 6, less one for start-up
    assert 5 <= len(chunks) <= 30, logs
    stamps = [_ns(msg.header) for _, msg in chunks]
    assert stamps == sorted(set(stamps))  # one chunk per observation, in order
    for (log_ns, msg), stamp in zip(chunks, stamps):
        assert start <= stamp <= end and log_ns >= stamp
        # the observation time is a camera frame's stamp (float seconds in the node: < 1 us off)
        assert min(abs(stamp - f) for f in frames) < 1000
        assert list(msg.joint_names) == list(bt.DEMO_JOINTS[:7]) and len(msg.points) == 50
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        np.testing.assert_allclose(times, np.arange(50) * 0.1, atol=1e-6)
        assert np.isfinite(np.stack([p.positions for p in msg.points])).all()


def test_bag_play_republishes_exact_bytes_with_offset_loop_and_latched_instruction(ros_env,
                                                                                    tmp_path):
    bag = bt.make_demo_bag(tmp_path / "in", 1.0, transport="compressed", image_size=(32, 24))
    topics = [CAMERA, "/joint_states", bt.DEMO_INSTRUCTION_TOPIC, "/clock"]
    log = open(tmp_path / "log.txt", "w")
    recorder = _start(ros_env, ["-m", "pi0_ttnn_node.tools.bag_record", str(tmp_path / "out"),
                                "--topics", *topics], log)
    try:
        t0 = time.monotonic()
        play = subprocess.run(
            [sys.executable, "-m", "pi0_ttnn_node.tools.bag_play", str(bag), "--rate", "2",
             "--start-offset", "0.5", "--loop", "--max-loops", "2", "--clock-hz", "50",
             "--wait-for-subscriber", *topics[:3], "--wait-timeout", "30", "--delay", "0.5"],
            cwd=REPO, env=ros_env, capture_output=True, text=True, timeout=60)
        wall = time.monotonic() - t0
        assert play.returncode == 0, play.stderr
        time.sleep(0.5)
    finally:
        rec_rc = _stop(recorder)
        log.close()
    assert rec_rc == 0, (tmp_path / "log.txt").read_text()
    offset = bt.DEMO_START_NS + 500_000_000
    with bt.BagReader(bag) as src:
        sent = {t: [bytes(m.msg) for m in src.raw_messages([t]) if m.log_time_ns >= offset]
                for t in topics[:2]}
    with bt.BagReader(tmp_path / "out") as out:
        got = {t: [bytes(m.msg) for m in out.raw_messages([t])] for t in topics}
        clock = [m.msg.clock.sec * 10**9 + m.msg.clock.nanosec for m in out.messages(["/clock"])]
        instruction = [m.msg.data for m in out.messages([bt.DEMO_INSTRUCTION_TOPIC])]
    for topic in topics[:2]:  # every message after the offset, twice, byte for byte
        expected = sent[topic] * 2
        assert len(got[topic]) == len(expected), topic
        assert all(_same_cdr(a, b) for a, b in zip(expected, got[topic])), topic
    assert instruction and set(instruction) == {bt.DEMO_INSTRUCTION}  # latched, before offset
    assert wall >= 2 * 0.5 / 2  # two passes of 0.5 s of bag at rate 2
    jumps = [b - a for a, b in zip(clock, clock[1:]) if b < a]
    assert len(jumps) == 1 and min(clock) >= offset and max(clock) <= bt.DEMO_START_NS + 10**9


def test_bag_play_exits_with_the_bag_error_code_for_a_missing_bag(ros_env, tmp_path):
    play = subprocess.run([sys.executable, "-m", "pi0_ttnn_node.tools.bag_play",
                           str(tmp_path / "missing")], cwd=REPO, env=ros_env, capture_output=True,
                          text=True, timeout=30)
    assert play.returncode == 3 and "does not exist" in play.stderr
