#!/usr/bin/env bash
# Test suite: set up the environment (first run only), then run pytest. Extra args go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap_venv.sh"
source "$root/scripts/ros_env.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
