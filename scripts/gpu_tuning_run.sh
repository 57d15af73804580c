#!/usr/bin/env bash
# One call on a lent GPU machine (made for the H200 with NVIDIA's OpenCL driver, issue 16): the
# benchmark with the built-in defaults, a bounded tuning run that writes the table to ship for the
# device's class, and the benchmark again with that table as a user gets it (no per-machine cache).
# Everything lands under $OUT; about 8 minutes with the default budgets.
#
#   PYTHONPATH=$PWD OUT=/tmp/out bash scripts/gpu_tuning_run.sh
#
# Afterwards: copy $OUT/<class>.json (e.g. nvidia-hopper.json) to clnet/tuned/ and commit it (its
# cases are checked by tests/test_tuning.py); the bench tables are $OUT/bench-{before,after}-*.md
# with every number in the .json beside them.
#
# Settings (environment): PLATFORM (default nvidia), TABLE_CLASS (default: the device's class, as
# clnet.tuning.device_class names it), TUNE_SECONDS (total tuning budget, default 270), STAGES (any
# of "before tune after", default all three: split them over calls if the 10-minute limit is near),
# REFERENCE / RESNETS / DEEP (the networks of each group), GEMM_SIZES, BENCH_TIMING (clnet-bench's
# timing options). The CPU's table the same way, on a quiet machine: PLATFORM=pocl (its class, e.g.
# cpu-avx512-intel, from PoCL's device name and the CPU's brand).
set -euo pipefail

OUT=${OUT:?set OUT to the folder for the results}
PLATFORM=${PLATFORM:-nvidia}
TUNE_SECONDS=${TUNE_SECONDS:-270}
STAGES=${STAGES:-before tune after}
REFERENCE=${REFERENCE-mlp mnist-cnn cifar-cnn}  # at batch 128 and 1024, with the square GEMMs
RESNETS=${RESNETS-resnet20 resnet18-cifar}      # at batch 128 and 512 (the ResNet rows)
DEEP=${DEEP-resnet50}                           # tuned at batch 128 (not benchmarked)
BENCH_TIMING=${BENCH_TIMING:---repeats 3 --min-time 0.2}
GEMM_SIZES=${GEMM_SIZES:-512 1024 2048 4096}      # benchmarked and tuned
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1

CLASS=${TABLE_CLASS:-$($PY -c "import clnet, clnet.tuning as t; print(t.device_class(clnet.device('$PLATFORM').info) or '')")}
if [ -z "$CLASS" ]; then
    echo "the device on platform $PLATFORM belongs to no known class: set TABLE_CLASS" >&2
    exit 2
fi
TABLE="$OUT/$CLASS.json"
echo "device class: $CLASS; table: $TABLE; $(date -u +%FT%TZ); commit $(git describe --always --dirty 2>/dev/null || echo '?')"

bench() {  # bench NAME: both tables of one state (before / after), markdown and JSON
    local name=$1
    # shellcheck disable=SC2086  # the lists split into arguments
    $PY -m clnet.bench --platform "$PLATFORM" --markdown $BENCH_TIMING --models $REFERENCE \
        --batch-sizes 128 1024 --gemm-sizes $GEMM_SIZES \
        --json "$OUT/bench-$name-reference.json" | tee "$OUT/bench-$name-reference.md"
    if [ -n "$RESNETS" ]; then
        # shellcheck disable=SC2086
        $PY -m clnet.bench --platform "$PLATFORM" --markdown $BENCH_TIMING --models $RESNETS \
            --batch-sizes 128 512 --no-gemm \
            --json "$OUT/bench-$name-resnets.json" | tee "$OUT/bench-$name-resnets.md" || \
            echo "(the ResNet rows failed: see above)"
    fi
}

tune() {  # tune SHARE ARGS...: one bounded tuning run extending the table; SHARE: % of TUNE_SECONDS
    local share=$1
    shift
    local seconds=$((TUNE_SECONDS * share / 100))
    # the budget starts after the plans are recorded; cut off 90 s past it (the table is written case by case)
    CLNET_TUNING_FILE="$OUT/tuning-cache.json" timeout $((seconds + 90)) $PY -m clnet.tune --platform "$PLATFORM" \
        --min-time 0.01 --repeats 2 --max-seconds "$seconds" --export-table "$TABLE" --table-class "$CLASS" "$@" \
        || echo "(the tuning run above stopped early: what it tuned is in the table)"
}

for stage in $STAGES; do
    case $stage in
    before)  # the built-in defaults: no cache, no shipped table
        CLNET_TUNING=0 bench before ;;
    tune)  # the cases with the most work first within each run; each run extends the table
        # shellcheck disable=SC2086
        tune 35 --models $REFERENCE --batch-sizes 128 1024 --sizes $GEMM_SIZES
        # shellcheck disable=SC2086
        [ -z "$RESNETS" ] || tune 45 --models $RESNETS --batch-sizes 128 512 --sizes
        # shellcheck disable=SC2086
        [ -z "$DEEP" ] || tune 20 --models $DEEP --batch-sizes 128 --sizes ;;
    after)  # the table shipped as a user gets it: in clnet/tuned/ of the clnet imported, no per-machine cache
        [ -f "$TABLE" ] || { echo "no table at $TABLE: run the tune stage first" >&2; exit 2; }
        cp "$TABLE" "$($PY -c 'import clnet.tuning as t; print(t.TABLES)')/$CLASS.json"
        CLNET_TUNING=1 CLNET_TUNING_FILE="$OUT/no-cache.json" bench after ;;
    *)
        echo "unknown stage $stage (before, tune, after)" >&2
        exit 2 ;;
    esac
done
echo "done $(date -u +%FT%TZ)"
