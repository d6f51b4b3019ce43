#!/usr/bin/env bash
# The command run on the GPU machine (issue 7). Needs training/data/{train.bin,heldout.bin,
# pack_meta.json,tokenizer/} (carried: training/data is git-ignored). Writes to $OUT:
# loss_curve.png, metrics.json, train_log.txt and res.tar.part-* (a tar of the whole result,
# model directory included, split in 15 MB pieces because the tool returns files of <= 16 MB).
# Reassemble here with:  cat res.tar.part-* | tar xf - -C DEST
set -o pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
BUDGET=${BUDGET:-330}
mkdir -p /tmp/res
python3 training/train_tiny.py --out /tmp/res --time-budget "$BUDGET" --batch 32 --eval-every 150 2>&1 \
  | grep -v -i "falling back" | tee /tmp/res/train_log.txt
cp /tmp/res/train_log.txt /tmp/res/metrics.json /tmp/res/loss_curve.png "$OUT"/ 2>/dev/null
(cd /tmp/res && tar cf /tmp/res.tar . && split -b 15m /tmp/res.tar "$OUT"/res.tar.part-)
ls -la "$OUT"
