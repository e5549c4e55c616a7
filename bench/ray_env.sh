#!/usr/bin/env bash
# The bench-only environment for bench/sweep.py's Ray Tune row: .venv-bench/ (gitignored).
#
#     bash bench/ray_env.sh        # or: make bench-sweep (makes it, then runs the bench)
#
# Ray Tune is a benchmark baseline, not a dependency of trainyard: `make install`, `make test`
# and CI never install it. This environment has Ray Tune from PyPI beside the project itself
# (`-e .[worker]`, so a Ray trainable imports trainyard's training code), and torch/torchvision
# come the way `make install` and .ci/run get them for .venv: pyproject's pins through pip's
# own settings (its index, extra indexes, find-links and constraints), so the same wheels.
# Idempotent: a second run only checks the installation.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

PYTHON=${PYTHON:-python3}
VENV=${BENCH_VENV:-.venv-bench}
RAY_REQUIREMENT=${RAY_REQUIREMENT:-ray[tune]>=2.50,<3}
STAMP=$VENV/.installed

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[worker]' "$RAY_REQUIREMENT"
  touch "$STAMP"
fi
"$VENV/bin/python" - <<'EOF'
import ray
import torch
from ray import tune  # noqa: F401

import workers.trainer.fit  # noqa: F401  (the trainable's import)

print(f"{__import__('sys').prefix}: ray {ray.__version__}, torch {torch.__version__}")
EOF
