#!/usr/bin/env bash
# Quickstart: Fashion-MNIST shards -> train a small Perceiver on raw pixels -> test accuracy on the 10,000 test images.
#   bash scripts/setup.sh && bash scripts/quickstart.sh
# Environment: PYTHON (default .venv/bin/python if present), DATA_DIR (data/fashion-mnist), RUN_DIR (runs/quickstart),
# CONFIG (configs/quickstart.yaml),
# extra arguments are passed to `perceiver-lit fit` (e.g. --trainer.max_epochs 1).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
BIN="$(dirname "$PYTHON")"
SHARDS="$BIN/perceiver-lit-shards"; [ -x "$SHARDS" ] || SHARDS="perceiver-lit-shards"
PLIT="$BIN/perceiver-lit"; [ -x "$PLIT" ] || PLIT="perceiver-lit"
DATA_DIR="${DATA_DIR:-data/fashion-mnist}"
RUN_DIR="${RUN_DIR:-runs/quickstart}"
CONFIG="${CONFIG:-configs/quickstart.yaml}"
export WANDB_MODE="${WANDB_MODE:-offline}"   # no account needed; `wandb sync $RUN_DIR/wandb/offline-run-*` uploads

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$(date +%s)

step "1/3 Fashion-MNIST shards in $DATA_DIR"
if [ -f "$DATA_DIR/index.json" ] && [ -f "$DATA_DIR/test-000003.tar" ] && [ -f "$DATA_DIR/train-000022.tar" ]; then
  echo "already written (delete $DATA_DIR to rewrite)"
else
  # 57,000 train + 3,000 val (held out from train) + 10,000 test, 2,500 samples per shard (uint8 npy: fast decode)
  "$SHARDS" fashion-mnist --out "$DATA_DIR" --maxcount 2500 --val-fraction 0.05
fi

step "2/3 perceiver-lit fit --config $CONFIG"
fit_start=$(date +%s)
"$PLIT" fit --config "$CONFIG" --trainer.default_root_dir "$RUN_DIR" \
  --data.init_args.train_urls "$DATA_DIR/train-{000000..000022}.tar" \
  --data.init_args.val_urls "$DATA_DIR/val-{000000..000001}.tar" \
  --data.init_args.test_urls "$DATA_DIR/test-{000000..000003}.tar" "$@"
fit_end=$(date +%s)

CKPT="$RUN_DIR/checkpoints/best.ckpt"
[ -f "$CKPT" ] || CKPT="$RUN_DIR/checkpoints/last.ckpt"
step "3/3 perceiver-lit test on the 10,000 test images ($CKPT)"
"$PLIT" test --config "$CONFIG" --trainer.default_root_dir "$RUN_DIR" --ckpt_path "$CKPT" \
  --data.init_args.test_urls "$DATA_DIR/test-{000000..000003}.tar" 2>&1 | tee "$RUN_DIR/test.log"
end=$(date +%s)

acc=$(grep -o 'test/acc1=[0-9.]*' "$RUN_DIR/test.log" | tail -1 | cut -d= -f2)
step "done: test accuracy ${acc:-?} | fit $((fit_end - fit_start)) s, test $((end - fit_end)) s, total $((end - start)) s"
echo "run directory: $RUN_DIR (config.yaml, checkpoints/, wandb/)"
