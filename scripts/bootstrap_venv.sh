#!/usr/bin/env bash
# Create (or reuse) the project's isolated Python 3.12 environment in .venv with pinned versions.
# Re-runs are cheap: the install is skipped while requirements/*.txt are unchanged.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PI0_VENV:-$root/.venv}"

find_python() {
  for cand in "${PI0_PYTHON:-}" python3.12; do
    [ -n "$cand" ] || continue
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then  # pyenv shims need the version selected
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -V -r); do
      p="$(pyenv root)/versions/$v/bin/python3.12"
      [ -x "$p" ] && { echo "$p"; return 0; }
    done
  fi
  return 1
}

stamp="$venv/.pi0-requirements.sha256"
want="$(cat "$root"/requirements/base.txt "$root"/requirements/constraints.txt "$root/setup.py" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
py="$(find_python)" || {
  echo "error: Python 3.12 not found (ttnn wheels exist for cp310/cp312 only). Install it" >&2
  echo "(apt/pyenv) or point PI0_PYTHON at a python3.12 binary." >&2
  exit 1
}
echo "[bootstrap] creating $venv with $py" >&2
"$py" -m venv "$venv"
fi
echo "[bootstrap] installing pinned requirements (torch, ttnn==0.81.1, ROS 2 Jazzy wheels; several GB)" >&2
"$venv/bin/python" -m pip install --quiet -r "$root/requirements/base.txt" -c "$root/requirements/constraints.txt"
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$root"
echo "$want" > "$stamp"
echo "[bootstrap] ready: $venv" >&2
