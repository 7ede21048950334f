#!/usr/bin/env bash
# The GPU checks in one command, for a machine without internet access:
#   1. the CUDA tests (CUDA graphs first, then the fast path, on-device scoring, divergence);
#   2. speed.py on the GPU: fast path eager and with CUDA graphs, loader path, side by side;
#   3. the paper-protocol comparison (label_efficiency.py --time-limit) in the time that is left, but
#      for the runs whose results are committed with the same configuration (--done).
# Everything it writes goes to OUT in at most 5 files: one log of every stage (gpu_checks.log), speed.py's
# three, and the comparison's results with its runs' logs and small files (no checkpoint) as one archive,
# written even when the script is stopped. It exits non-zero if a stage failed or ran out of time (runs
# stopped at the limit: the comparison's rc 3).
#
#   benchmarks/gpu_checks.sh OUT SECONDS [METHOD ...]
#
# Expects data/camvid_jpeg95 (benchmarks/jpeg_camvid.py) and data/mobilenet_v2_imagenet.pth in the
# repository root; wheels of packages the machine lacks, if any, in .whl/ (installed without an index).
# For a machine with torch, torchvision and the usual scientific stack but not these, on Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl segmentation-models-pytorch==0.6.0 pydantic==2.14.4 \
#       pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
#       cityscapesscripts==2.3.0
# STAGES (default "tests speed compare") picks stages. Runs resume from WORK (default
# /tmp/gpu_checks_runs), so a second call with STAGES=compare continues them only on the same machine.
# CUDA_GRAPHS=false runs the comparison with train.cuda_graphs=false, its results and runs named
# apart; stage 1 sets it when the CUDA-graph tests fail or run out of time (not when pytest cannot
# run them). Either way it is kept in WORK, so a later call on the same machine continues the same
# runs, and the log says it: a call on another machine is given it (CUDA_GRAPHS=false ...). A run
# stopped at the limit comes back as its log and small files only; its checkpoints stay in WORK.
# SMOKE=1 runs stages 2 and 3 on the CPU at smoke sizes, to check the script itself.
set -uo pipefail
usage="usage: gpu_checks.sh OUT SECONDS [METHOD ...]"
out=$(realpath -m "${1:?$usage}")
seconds=${2:?$usage}
shift 2
cd "$(dirname "$0")/.."
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(s4al full_supervised sup_10 ssl_10 region_random_ssl s4al_paper s4al_30x30x2)
started=$(date +%s)
left() { echo $((seconds - ($(date +%s) - started))); }
stages=" ${STAGES:-tests speed compare} "
stage() { [[ "$stages" == *" $1 "* ]]; }
failed=()
work=$(realpath -m "${WORK:-/tmp/gpu_checks_runs}")
mkdir -p "$work"
[ -z "${CUDA_GRAPHS:-}" ] && [ -f "$work/cuda_graphs" ] && CUDA_GRAPHS=$(cat "$work/cuda_graphs")
mkdir -p "$out"
log="$out/gpu_checks.log"
say() { echo "$*" | tee -a "$log"; }  # the script's own lines, in the log between the stages' output
check() {  # check NAME RC: a stage's exit status, 124 when its time limit stopped it
    [ "$2" = 0 ] || { failed+=("$1 (rc $2${3:+, $3})"); say "!! $1: rc $2${3:+, $3}"; }
}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

if [ "${SMOKE:-0}" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { say "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD:$PWD/benchmarks"
# a package missing or at odds with the machine's is found in seconds, before any stage
imports="segmentation_models_pytorch, pydantic, s4al.cli, s4al.train.trainer"
[ "${SMOKE:-0}" != 1 ] && stage tests && imports+=", pytest"
"$python" -c "import $imports" 2>&1 | tee -a "$log" \
    || { say "s4al or pytest does not import here (above; wheels for .whl/: this script's header)"; exit 1; }

if [ "${SMOKE:-0}" = 1 ]; then
    device=cpu protocol=smoke name=smoke_checks data=() speed=(--smoke --fast --tag smoke) parallel=2
else
    device=cuda protocol=paper name=paper_jpeg95 parallel=4
    data=(--data-root data/camvid_jpeg95 --weights data/mobilenet_v2_imagenet.pth)
    speed=(--workers 8 --pools 100 --profile 5 "${data[@]}")
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee -a "$log"
    # without a usable GPU the CUDA tests would skip and the comparison train on the CPUs
    "$python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" 2>&1 | tee -a "$log" \
        || { say "no usable CUDA device (above)"; exit 1; }
    if stage tests; then
        # the CUDA graphs alone first: a failure of theirs (rc 1), a crash (a signal) or the time limit
        # (124), and theirs alone, turns the graphs off for the comparison; pytest not running them
        # (rc 2-5: a collection or usage error) says nothing of the graphs
        say "== 1. CUDA tests: the CUDA graphs, then the fast path"
        timeout 150 "$python" -m pytest -q -p no:cacheprovider tests/test_graphs.py 2>&1 | tee -a "$log" | tail -8
        rc=${PIPESTATUS[0]}
        check graph_tests "$rc"
        if [ "$rc" = 1 ] || [ "$rc" = 124 ] || [ "$rc" -gt 128 ]; then
            say "!! the CUDA-graph tests ended with rc $rc: the comparison runs with train.cuda_graphs=false"
            CUDA_GRAPHS=false
            echo false > "$work/cuda_graphs"
        fi
        if [ "${CUDA_GRAPHS:-}" = false ]; then
            say "CUDA graphs off: give CUDA_GRAPHS=false to a later call on another machine"
        else
            say "CUDA graphs on (a later call on another machine: leave CUDA_GRAPHS unset)"
        fi
        # the tests that need a GPU, then the fast path's others (on this machine they train on the GPU)
        timeout 80 "$python" -m pytest -q -p no:cacheprovider -m cuda tests/test_device_scoring.py \
            tests/test_trainer.py 2>&1 | tee -a "$log" | tail -8
        check gpu_tests "${PIPESTATUS[0]}"
        timeout 90 "$python" -m pytest -q -p no:cacheprovider -m "not cuda" tests/test_device_scoring.py \
            tests/test_trainer.py -k "fast or diverge" 2>&1 | tee -a "$log" | tail -8
        check fast_path_tests "${PIPESTATUS[0]}"
    fi
fi

if stage speed; then  # speed.py rewrites its files after each part: a run stopped at its limit keeps those done
    limit=$(( $(left) - 30 < 330 ? $(left) - 30 : 330 ))
    if [ "$limit" -lt 60 ]; then
        check speed skipped "only ${limit} s left"
    else
        say "== 2. speed ($(left) s left, at most $limit s)"
        [ "${CUDA_GRAPHS:-}" = false ] && speed+=(--no-graphs)
        timeout "$limit" "$python" benchmarks/speed.py --device "$device" "${speed[@]}" --out "$out" \
            2>&1 | tee -a "$log" | tail -40
        rc=${PIPESTATUS[0]}
        check speed "$rc" "$([ "$rc" = 124 ] && echo "stopped at its limit: the speed files hold the parts done")"
    fi
fi

overrides=()
if [ -n "${CUDA_GRAPHS:-}" ]; then  # a variant: its own results and runs
    overrides=(--set "train.cuda_graphs=$CUDA_GRAPHS") name=${name}_cuda_graphs_$CUDA_GRAPHS
    echo "$CUDA_GRAPHS" > "$work/cuda_graphs"
fi
archive() {  # the results, the runs' logs and small files (no checkpoint) as one file: OUT takes few
    mkdir -p "$out/label_efficiency" "$work/$name"
    tar czf "$out/label_efficiency.tgz" -C "$out" label_efficiency -C "$work" --exclude=checkpoints "$name" \
        && rm -rf "$out/label_efficiency"  # kept as they are if the archive fails
}
window=$(( $(left) - 25 ))
if stage compare; then
    if [ "$window" -le 60 ]; then
        check compare skipped "only ${window} s left"
    else
        say "== 3. label efficiency, $protocol, ${methods[*]}: ${window} s"
        trap 'archive; exit 143' TERM  # on a TERM to the group (timeout's), once the runs stop: their work comes back
        # tee and tail outlive a TERM to the group: the window still reports as its runs stop and save
        "$python" benchmarks/label_efficiency.py --protocol "$protocol" --name "$name" "${data[@]}" --methods "${methods[@]}" \
            "${overrides[@]}" --seeds ${SEEDS:-0} --time-limit "$window" --parallel "$parallel" --results "$out/label_efficiency" \
            --done benchmarks/results/label_efficiency --work "$work" 2>&1 | (trap '' TERM; exec tee -a "$log") \
            | (trap '' TERM; exec tail -30)
        check compare "${PIPESTATUS[0]}"
        trap - TERM
        archive
        check archive "$?"
    fi
fi
ls -la "$out" "$out"/speed 2>/dev/null
say "done in $(( $(date +%s) - started )) s${failed[*]:+; failed: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
