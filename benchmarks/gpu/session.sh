#!/usr/bin/env bash
# Everything a session with the lent GPU (an H200, torch 2.11.0+cu130, CUDA 13) runs, in ONE call of
# the device tool (a command may run 600 s), from the repository root:
#
#     bash benchmarks/gpu/session.sh            # $OUT (set by the device tool) receives the logs
#
# Steps, each with its own time limit, all of them within BUDGET (540 s) in all, so that the call
# ends with time to spare and one hang cannot eat the lease; a step that would start with too
# little of the budget left is skipped, not cut short:
#   1. build (CUDA for sm_90)                           5. the tensor-core attention check + timings
#                                                          (the keyword features included)
#   2. the CUDA tests (argument errors included)        6. Gumbel-softmax / GAN-loss check + timings
#   3. compute-sanitizer memcheck                       7. gencore check (every kernel vs reference)
#   4. compute-sanitizer racecheck                      8. the GPT-2-small train step, auto/fused/sdpa
#                                                       9. auto's first use on CUDA: each op's check in
#                                                          a child process, then calibration, then
#                                                          auto vs torch (benchmarks/auto_first_use.py)
# One summary line per step is printed (and appended to $OUT/summary.txt) as the step finishes; the
# whole summary comes again at the end. No CPU timings: every step times the GPU only. Record the
# figures in benchmarks/RESULTS.md with the device named. GENCORE_SESSION_DRY=1 runs the script's
# flow with every command replaced by `true` (tests/test_gpu_session.py does that).
set -u
BUDGET=540
OUT=${OUT:-/tmp/gencore-gpu}
DRY=${GENCORE_SESSION_DRY:-0}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD GENCORE_REQUIRE_C=1
summary=()
start=$SECONDS

step() {  # step NAME LIMIT_SECONDS COMMAND...: runs it, keeps its log, prints its summary line
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - start))) t0=$SECONDS rc
  echo "=== $name (limit ${limit}s, ${left}s of the budget left)"
  if ((left < limit)); then
    rc=skipped
  else
    if [ "$DRY" = 1 ]; then set -- true; fi
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.log"
  fi
  local line
  line=$(printf 'SUMMARY %-10s rc=%-7s %4ss' "$name" "$rc" "$((SECONDS - t0))")
  echo "$line"
  echo "$line" >> "$OUT/summary.txt"
  summary+=("$line")
  [ "$rc" = 0 ]
}

if [ "$DRY" != 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/device.txt"
  g++ --version | head -1 >> "$OUT/device.txt"
  cat "$OUT/device.txt"
fi

# Limits: 90 + 100 + 60 + 60 + 70 + 40 + 30 + 40 + 50 = 540 s (tests/test_gpu_session.py keeps the
# sum within BUDGET).
step build 90 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 GENCORE_CUDA=1 \
  python3 setup.py build_ext --inplace || { echo "=== summary"; printf '%s\n' "${summary[@]}"; exit 1; }
step tests 100 python3 -m pytest -q -p no:cacheprovider -n 8 -k cuda tests
step memcheck 60 compute-sanitizer --tool memcheck \
  python3 -m pytest -q -p no:cacheprovider tests/test_attention.py -k test_cuda_mma_small
step racecheck 60 compute-sanitizer --tool racecheck --racecheck-report hazard \
  python3 -m pytest -q -p no:cacheprovider tests/test_attention.py -k test_cuda_mma_small
step attention 70 python3 benchmarks/gpu/attention_check.py --quick --json "$OUT/attention.json"
step ops 40 python3 benchmarks/gpu/ops_check.py --device cuda
step check 30 python3 -m gencore check --device cuda
step gpt 40 python3 -m gencore bench --device cuda -k gpt2_small --json "$OUT/gpt.json"
step autotune 50 python3 benchmarks/auto_first_use.py --device cuda \
  -k "bfloat16 causal/B8-H8-Sq512" "1280x5000/fwd+bwd" "n4096"

echo "=== summary ($((SECONDS - start)) s of ${BUDGET})"
printf '%s\n' "${summary[@]}"
