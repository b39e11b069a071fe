#!/usr/bin/env bash
# Quickstart: Fashion-MNIST shards -> train a small Perceiver on raw pixels -> test accuracy on the 10,000 test images.
#   bash scripts/setup.sh && bash scripts/quickstart.sh
# Environment: PYTHON (default .venv/bin/python if present), DATA_DIR (data/fashion-mnist), RUN_DIR (runs/quickstart),
# CONFIG (configs/quickstart.yaml), SHARDS_ARGS (the shard writer's options, default "--maxcount 2500
# --val-fraction 0.05"; e.g. add "--limit 2000" for a smoke run on a few shards),
# extra arguments are passed to `perceiver-lit fit` (e.g. --trainer.max_epochs 1).
# The fit and test use whatever train/val/test shards DATA_DIR holds; the test uses the checkpoint this fit wrote.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
BIN="$(dirname "$PYTHON")"
SHARDS="$BIN/perceiver-lit-shards"; [ -x "$SHARDS" ] || SHARDS="perceiver-lit-shards"
PLIT="$BIN/perceiver-lit"; [ -x "$PLIT" ] || PLIT="perceiver-lit"
DATA_DIR="${DATA_DIR:-data/fashion-mnist}"
RUN_DIR="${RUN_DIR:-runs/quickstart}"
CONFIG="${CONFIG:-configs/quickstart.yaml}"
SHARDS_ARGS="${SHARDS_ARGS:---maxcount 2500 --val-fraction 0.05}"
export WANDB_MODE="${WANDB_MODE:-offline}"   # no account needed; `wandb sync $RUN_DIR/wandb/offline-run-*` uploads

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$(date +%s)

step "1/3 Fashion-MNIST shards in $DATA_DIR"
# the shards of one split in DATA_DIR, '::'-joined (the data modules take that form)
urls() { find "$DATA_DIR" -maxdepth 1 -name "$1-*.tar" | sort | awk 'BEGIN { ORS = "" } { print (NR > 1 ? "::" : "") $0 }'; }
if [ -f "$DATA_DIR/index.json" ] && [ -n "$(urls train)" ] && [ -n "$(urls val)" ] && [ -n "$(urls test)" ]; then
  echo "already written (delete $DATA_DIR to rewrite)"
else
  # 57,000 train + 3,000 val (held out from train) + 10,000 test, 2,500 samples per shard (uint8 npy: fast decode)
  # shellcheck disable=SC2086  # SHARDS_ARGS is a list of options
  "$SHARDS" fashion-mnist --out "$DATA_DIR" $SHARDS_ARGS
fi

step "2/3 perceiver-lit fit --config $CONFIG"
mkdir -p "$RUN_DIR"
touch "$RUN_DIR/.fit-start"   # checkpoints older than this are an earlier run's
fit_start=$(date +%s)
"$PLIT" fit --config "$CONFIG" --trainer.default_root_dir "$RUN_DIR" \
  --data.init_args.train_urls "$(urls train)" \
  --data.init_args.val_urls "$(urls val)" \
  --data.init_args.test_urls "$(urls test)" "$@"
fit_end=$(date +%s)

# best.ckpt when this fit validated, else its last.ckpt (e.g. --trainer.max_steps ended it before a validation);
# never a best.ckpt an earlier run left in RUN_DIR.
CKPT=""
for c in "$RUN_DIR/checkpoints/best.ckpt" "$RUN_DIR/checkpoints/last.ckpt"; do
  if [ -f "$c" ] && [ "$c" -nt "$RUN_DIR/.fit-start" ]; then CKPT="$c"; break; fi
done
[ -n "$CKPT" ] || { echo "error: the fit wrote no checkpoint under $RUN_DIR/checkpoints" >&2; exit 1; }
step "3/3 perceiver-lit test on the test images ($CKPT)"
"$PLIT" test --config "$CONFIG" --trainer.default_root_dir "$RUN_DIR" --ckpt_path "$CKPT" \
  --data.init_args.test_urls "$(urls test)" 2>&1 | tee "$RUN_DIR/test.log"
end=$(date +%s)

acc=$(grep -o 'test/acc1=[0-9.]*' "$RUN_DIR/test.log" | tail -1 | cut -d= -f2)
step "done: test accuracy ${acc:-?} | fit $((fit_end - fit_start)) s, test $((end - fit_end)) s, total $((end - start)) s"
echo "run directory: $RUN_DIR (config.yaml, checkpoints/, wandb/)"
