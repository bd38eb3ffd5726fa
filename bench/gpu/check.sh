#!/usr/bin/env bash
# The GPU check, one command on a fresh GPU machine (Python 3.12 with CUDA torch, no network):
#
#   bash bench/gpu/check.sh RESULTS_DIR
#
# Installs .gpukit/ (make gpu-kit, carried with the tree) with pip --no-index --no-deps --target
# into a temporary folder put on PYTHONPATH, then runs, each under its own time limit so that
# the whole check ends within 8 minutes: the gpu tests (pytest -m gpu), bench/gpu/conv4.py and
# bench/gpu/learners.py. Every figure goes to stdout and to RESULTS_DIR (one file per step,
# check.log with everything, summary.txt with each step's exit status and seconds). The exit
# status is 1 if any step failed: on a machine without CUDA the tests fail and the benches
# print their CPU side only.
#
# Environment: PYTHON (default python3); GPU_CHECK_QUICK=1 for small iteration counts (a dry run
# on a CPU machine). With a Python other than 3.12 (a CPU dry run in .venv) the kit is still
# installed, as for 3.12, to check that it installs, but the run uses that Python's own packages.
set -uo pipefail

results=${1:?usage: bench/gpu/check.sh RESULTS_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
python=$(command -v "${PYTHON:-python3}") || { echo "no ${PYTHON:-python3}"; exit 1; }
case $python in /*) ;; *) python=$PWD/$python ;; esac
mkdir -p "$results"
results=$(cd "$results" && pwd)
exec > >(tee "$results/check.log") 2>&1
started=$SECONDS
: > "$results/summary.txt"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
site=$work/site
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true

# step NAME LIMIT_S COMMAND...: run in $work (outside the tree, whose metaorch/ stub would shadow
# the installed package), output to stdout and RESULTS_DIR/NAME.txt, status to summary.txt.
failed=0
step() {
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit}s)"
    (cd "$work" && timeout -k 10 "$limit" "$@") 2>&1 | tee "$results/$name.txt"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || failed=1
    echo "=== $name: exit $rc after $((SECONDS - t0))s"
    printf '%-12s exit %3s  %4ss\n' "$name" "$rc" "$((SECONDS - t0))" >> "$results/summary.txt"
}

version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cross=()
[ "$version" = 3.12 ] || cross=(--python-version 3.12 --implementation cp)
if "$python" -m pip --version > /dev/null 2>&1; then
    step install 60 "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
        --target "$site" "${cross[@]}" "$root"/.gpukit/*.whl
else  # no pip: a wheel is a zip of what --target would hold (its .data scripts aside)
    step install 60 bash -c "for w in \"$root\"/.gpukit/*.whl; do \"$python\" -m zipfile -e \"\$w\" \"$site\" || exit 1; done"
fi
if [ "$version" = 3.12 ]; then
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "note: Python $version: the kit (for 3.12) installed into $site; this run uses $python's own packages"
fi

step machine 20 bash -c "nvidia-smi -L || echo 'no nvidia-smi'; \"$python\" -c 'import torch, ray, metaorch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \"GPU\", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None); print(\"ray\", ray.__version__, \"metaorch\", metaorch.__file__)'"

if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    conv4_args=(--iterations 5 --cpu-iterations 5 --baseline-iterations 2)
    learner_args=(--pearl-updates 20 --pearl-tasks 4 --trpo-tasks 2)
else
    conv4_args=()
    learner_args=()
fi
step gpu-tests 120 "$python" -P -m pytest -c "$root/pyproject.toml" --rootdir "$root" -p no:cacheprovider -q -rA --tb=short -m gpu "$root/tests/test_gpu.py"
step conv4 170 "$python" "$root/bench/gpu/conv4.py" --root "$root/.gpukit/omniglot" "${conv4_args[@]}"
step learners 90 "$python" "$root/bench/gpu/learners.py" "${learner_args[@]}"

echo "=== summary ($((SECONDS - started))s in all)"
cat "$results/summary.txt"
exit $failed
