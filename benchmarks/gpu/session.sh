#!/usr/bin/env bash
# Everything a session with the lent GPU (an H200, torch 2.11.0+cu130, CUDA 13) runs, in ONE call of
# the device tool, from the repository root:
#
#     bash benchmarks/gpu/session.sh            # $OUT (set by the device tool) receives the logs
#
# Steps, each with its own time limit so one hang cannot eat the lease (about 9 minutes in all):
#   1. build (CUDA for sm_90)                         5. the tensor-core attention check + timings
#   2. the argument-error test (issue 11's crash)     6. Gumbel-softmax / GAN-loss check + timings
#   3. the whole test suite, CUDA cases included      7. gencore check (every kernel vs reference)
#   4. compute-sanitizer memcheck/racecheck           8. the GPT-2-small train step, auto/fused/sdpa
# A summary of every step's result comes last. Record the figures in benchmarks/RESULTS.md with the
# device named.
set -u
OUT=${OUT:-/tmp/gencore-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD GENCORE_REQUIRE_C=1
summary=()

step() {  # step NAME LIMIT_SECONDS COMMAND...: runs it, keeps its log, notes the result
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  summary+=("$(printf '%-12s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/device.txt"
g++ --version | head -1 >> "$OUT/device.txt"
cat "$OUT/device.txt"

step build 300 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 GENCORE_CUDA=1 \
  python3 setup.py build_ext --inplace || { printf '%s\n' "${summary[@]}"; exit 1; }
step errors 120 python3 -m pytest -q -p no:cacheprovider tests/test_errors.py
step tests 300 python3 -m pytest -q -p no:cacheprovider -n 16 tests
step memcheck 150 compute-sanitizer --tool memcheck \
  python3 -m pytest -q -p no:cacheprovider tests/test_attention.py -k test_cuda_mma_small
step racecheck 150 compute-sanitizer --tool racecheck --racecheck-report hazard \
  python3 -m pytest -q -p no:cacheprovider tests/test_attention.py -k test_cuda_mma_small
step attention 200 python3 benchmarks/gpu/attention_check.py --json "$OUT/attention.json"
step ops 120 python3 benchmarks/gpu/ops_check.py --device cuda
step check 120 python3 -m gencore check
step gpt 180 python3 benchmarks/bench_gpt.py --rounds 10 --gen-rounds 1

echo "=== summary"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
