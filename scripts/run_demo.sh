#!/usr/bin/env bash
# Main job: set up the environment (first run only), then run the policy on the embedded default.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap_venv.sh"
source "$root/scripts/ros_env.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pi0_ttnn_node.tools.demo "$@"
