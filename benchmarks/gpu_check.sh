#!/usr/bin/env bash
# What a GPU machine runs first: the paths the CPU suite cannot reach, in one go, within 8 minutes on one GPU.
#   bash benchmarks/gpu_check.sh            # figures and logs under benchmarks/results/ (gpu_check.md: the table)
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # print the commands, run nothing (tests/unit/test_gpu_check.py)
# Steps (each with its own time limit; every step runs even after a failure; exit status 1 if any failed):
#   1. every trainer preset (configs/trainer/*.yaml) for a few bf16 steps through `perceiver-lit fit` on synthetic
#      text shards: LAMB + clipping (the paper recipes), and AdamW + clipping (the combination that crashed, issue 19)
#      on gpu.yaml and ddp.yaml; fsdp.yaml is FSDP2 on this one GPU;
#   2. SDPA takes a fused kernel (flash / memory-efficient / cuDNN) for every attention of the models, forward and
#      backward, in bf16 (benchmarks/sdpa_check.py);
#   3. the pinned-memory tests (GPU-only: a CPU-only torch has no pinned memory, so the CPU suite skips them);
#   4. the peers suite and the utilization (MFU) benchmark on CUDA, --quick (results/peers_cuda.*, mfu_cuda.*).
# Environment: PYTHON (default .venv/bin/python if present, else python3), STEPS (default 5), BUDGET_S (default
# 470: a step that would start later is reported NOT RUN, and each step's limit is cut to what is left).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
STEPS="${STEPS:-5}"
BUDGET_S="${BUDGET_S:-470}"  # 8 minutes, less the time to write the table
DRY="${GPU_CHECK_DRY_RUN:-}"
OUT="${GPU_CHECK_OUT:-benchmarks/results}"  # tests/unit/test_gpu_check.py writes elsewhere
LOGS="$OUT/gpu_check"
WORK="${TMPDIR:-/tmp}/gpu_check.dry"
[ -n "$DRY" ] || WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
export WANDB_MODE="${WANDB_MODE:-offline}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -n "$DRY" ] || mkdir -p "$LOGS"
ROWS=()
FAILED=0
START=$(date +%s)

# run NAME SECONDS CMD...: run CMD with a time limit, log to $LOGS/NAME.log, add a row to the table.
run() {
  local name=$1 limit=$2; shift 2
  if [ -n "$DRY" ]; then printf 'CMD'; printf ' %q' "$@"; printf '\n'; return 0; fi
  local t0=$(date +%s) status=ok left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -le 5 ]; then  # the whole script keeps to its 8 minutes: what no longer fits is reported, not run
    FAILED=1; ROWS+=("| $name | NOT RUN (the ${BUDGET_S} s budget is spent) | 0 | |"); return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "==> [$(date +%H:%M:%S)] $name: $*"
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1 || status="FAILED ($?)"
  [ "$status" = ok ] || { FAILED=1; tail -n 15 "$LOGS/$name.log"; }
  ROWS+=("| $name | $status | $(( $(date +%s) - t0 )) | gpu_check/$name.log |")
}

# Tiny synthetic text shards (4 per split: one per rank for DDP / FSDP2 on up to 4 GPUs).
run shards 60 "$PYTHON" -m datamodules.shards.cli synthetic text --num-samples 64 --val-fraction 0.25 \
  --maxcount 4 --out "$WORK/text" --no-progress --workers 1
urls() { local f out=""; for f in "$WORK/text/$1"-*.tar; do out="${out:+$out::}$f"; done; echo "$out"; }
DATA=(--data.init_args.train_urls "$(urls train)" --data.init_args.val_urls "$(urls val)"
      --data.init_args.test_urls null --data.init_args.batch_size 4 --data.init_args.max_length 256)
BUDGET=(--trainer.max_steps "$STEPS" --trainer.limit_val_batches 1 --trainer.num_sanity_val_steps 0
        --trainer.enable_progress_bar false --trainer.logger false)
fit() {  # fit NAME PRESET EXTRA...: configs/local/text_mlm.yaml (LAMB, clip 1.0) under configs/trainer/PRESET.yaml
  local name=$1 preset=$2; shift 2
  run "$name" 120 "$PYTHON" -m perceiver_lit.cli fit --config configs/local/text_mlm.yaml \
    --config "configs/trainer/$preset.yaml" "${DATA[@]}" "${BUDGET[@]}" \
    --trainer.default_root_dir "$WORK/runs/$name" "$@"
}

# 1. every trainer preset, bf16 where it ships bf16 (cpu.yaml is the fp32 CPU default, run here as a reference)
for preset in gpu ddp fsdp fsdp_classic cpu_bf16 cpu; do
  fit "preset_${preset}_lamb" "$preset"
done
fit preset_gpu_adamw gpu --model.init_args.optimizer adamw
fit preset_ddp_adamw ddp --model.init_args.optimizer adamw

# 2. SDPA's fused kernels
run sdpa_fused 90 "$PYTHON" -m benchmarks.sdpa_check --device cuda --out "$OUT/sdpa_check.json"

# 3. pinned memory (GPU-only tests; a skip is a failure here)
run pinned_memory 120 "$PYTHON" -m pytest tests/unit/test_data_base.py -q -rs -k pin -p no:cacheprovider
# 4. peers and utilization on CUDA (bf16 autocast, the default there)
run peers_cuda 150 "$PYTHON" -m benchmarks.peers --device cuda --quick --name peers_cuda
run mfu_cuda 120 "$PYTHON" -m benchmarks.mfu --device cuda --quick --name mfu_cuda

[ -n "$DRY" ] && exit 0
if grep -q "SKIPPED" "$LOGS/pinned_memory.log" 2>/dev/null; then
  FAILED=1; ROWS+=("| pinned_memory | FAILED (a pinned-memory test skipped on a GPU machine) | | |")
fi
{
  gpu=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo 'no GPU') | head -1)
  echo "# gpu_check: $(date -u +%Y-%m-%dT%H:%MZ), $gpu"
  echo
  echo "Total $(( $(date +%s) - START )) s (limit: 8 min). Commands: benchmarks/gpu_check.sh; logs: gpu_check/*.log."
  echo
  echo "| step | status | seconds | log |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} > "$OUT/gpu_check.md"
cat "$OUT/gpu_check.md"
rm -rf "$WORK"
exit $FAILED
