#!/usr/bin/env bash
# The GPU check in one command, on a machine with a CUDA GPU and no network:
#   1. installs the wheels in .whl/ when there are any (gymnasium, stable-baselines3 and what they need that
#      the machine lacks) into /tmp/rlfl_site, offline;
#   2. makes `rlfl` importable: an editable install of this checkout, offline, when it is not importable yet;
#   3. runs tests/test_cuda.py, then benchmarks/gpu_check.py with this script's arguments.
# Both steps of 3 run even when the first fails; the exit code is non-zero when either failed.
#
#   bash benchmarks/gpu_check.sh                     # the full check (figures into benchmarks/RESULTS.md)
#   bash benchmarks/gpu_check.sh --parts pretrain    # any benchmarks/gpu_check.py flags
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rlfl_site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/rlfl_site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PYTHON" -c "import rlfl.agents, rlfl.envs" 2> /dev/null; then
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e .; then
        # no build backend at hand: the package as pyproject.toml lays it out (rlfl/, envs/ as rlfl.envs,
        # agents/ as rlfl.agents), made of links to this checkout
        shim=/tmp/rlfl_shim
        rm -rf "$shim" && mkdir -p "$shim/rlfl"
        ln -s "$PWD"/rlfl/* "$shim/rlfl/" && ln -s "$PWD/envs" "$shim/rlfl/envs" && ln -s "$PWD/agents" "$shim/rlfl/agents"
        export PYTHONPATH=$shim${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
"$PYTHON" -c "import torch, rlfl.agents; print('rlfl ready: torch', torch.__version__, 'cuda', torch.cuda.is_available())"

status=0
"$PYTHON" -m pytest -q tests/test_cuda.py || status=1
"$PYTHON" benchmarks/gpu_check.py "$@" || status=1
exit $status
