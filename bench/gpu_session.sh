#!/usr/bin/env bash
# Everything worth running on a lent GPU, in one call, most important first: build the
# driver extension, the GPU-only tests, the main job (gpt2-xl, N = 2000) on both backends,
# the benchmarks, then the full GPU test files. Each stage has its own time limit and its
# log under $OUT; the summary of each stage is printed as it ends.
# Usage (device machine, repository root): bash bench/gpu_session.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
OUT=${OUT:-/tmp/gpt2fast-gpu}
mkdir -p "$OUT"
WORK=$(mktemp -d)

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    tail -n "${TAIL:-8}" "$OUT/$name.log"
}

main_job() {  # main_job NAME BACKEND MODEL: the README's main job with random weights
    local dir="$WORK/$1"
    mkdir -p "$dir"
    (cd "$dir" && python3 -m gpt2fast --model "$3" --weights random --backend "$2" \
        --size "${MAIN_N:-2000}" --matrixerror m </dev/null) || return
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['backend'], m['device'], m['timings'])" \
        "$dir/Eplot.json"
}
export -f main_job
export WORK

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, triton.__version__)"
stage install 120 bash -c 'python3 -m pip install -q --no-index --no-deps .whl/*.whl &&
    python3 -m pip install -q --no-build-isolation --no-deps -e .'
stage gpu-only-tests 120 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_driver.py::test_cuda_graph_path_matches_the_cpu_path \
    tests/test_triton_backend.py::test_triton_cuda_graph_path_matches_the_torch_backend
stage main-triton-gpt2-xl 120 bash -c 'main_job triton-xl triton gpt2-xl'
stage bench 200 env GPT2FAST_BENCH_ITERATIONS="${BENCH_N:-200}" GPT2FAST_BENCH_MAX_LENGTH=30 \
    python3 -m pytest -q -p no:cacheprovider bench --benchmark-only -k "not test_loop" \
    --benchmark-json "$OUT/bench.json"
stage main-torch-gpt2-xl 90 bash -c 'main_job torch-xl torch gpt2-xl'
stage main-triton-gpt2 45 bash -c 'main_job triton-small triton gpt2'
stage gpu-tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton_backend.py \
    tests/test_driver.py tests/kernels -k "not ahead_of_time"
TAIL=40 stage bench-summary 5 grep -A40 "gpt2fast / baseline" "$OUT/bench.log"
