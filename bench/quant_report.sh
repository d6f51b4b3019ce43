#!/usr/bin/env bash
# Quantized weights, quality and speed, for docs/performance.md:
#  1. the shipped tiny model quantized to each type, perplexity on the held-out sample of
#     tests/fixtures/perplexity (the bf16 model's is the transformers reference, 13.8786);
#  2. the 0.5B release shape with random weights in each type: prefill and decode speed
#     (JSON in bench/results/0.5B-<type>.json).
#   bash bench/quant_report.sh [path/to/falcon-h1] [threads]     (SPEED=0: perplexity only)
# Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build/falcon-h1}
THREADS=${2:-2}
TYPES=${TYPES:-"q8_0 q4_0 q4_k"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p bench/results

echo "== perplexity of models/falcon-h1-tiny on tests/fixtures/perplexity/heldout_sample.txt"
printf "%-6s %10s %12s %10s\n" type "MB" perplexity "vs bf16"
base=$("$BIN" perplexity -m models/falcon-h1-tiny tests/fixtures/perplexity/heldout_sample.txt -t "$THREADS" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
mb=$(du -m --apparent-size models/falcon-h1-tiny/model.safetensors | cut -f1)
printf "%-6s %10s %12.4f %10s\n" bf16 "$mb" "$base" "-"
for t in $TYPES; do
  "$BIN" quantize -m models/falcon-h1-tiny --type "$t" -o "$tmp/$t" -t "$THREADS" -q >/dev/null
  ppl=$("$BIN" perplexity -m "$tmp/$t" tests/fixtures/perplexity/heldout_sample.txt -t "$THREADS" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
  mb=$(du -m --apparent-size "$tmp/$t/model.safetensors" | cut -f1)
  printf "%-6s %10s %12.4f %+9.2f%%\n" "$t" "$mb" "$ppl" "$(python3 -c "print(100*($ppl/$base-1))")"
done

[ "${SPEED:-1}" = 0 ] && exit 0
echo "== 0.5B shape, random weights, $THREADS threads"
for t in bf16 $TYPES; do
  "$BIN" bench --shape 0.5B --dtype "$t" -t "$THREADS" -p "${PROMPTS:-512}" -d "${DEPTHS:-0,4096}" --json \
    > "bench/results/0.5B-$t.json"
done
python3 - $TYPES <<'PY'
import json, sys
print(f"{'type':6} {'weights MB':>10} {'prefill tok/s':>14} " + " ".join(f"{'decode@'+str(d['depth']):>12}" for d in json.load(open('bench/results/0.5B-bf16.json'))['decode']) + "  % of floor")
for t in ['bf16'] + sys.argv[1:]:
    j = json.load(open(f'bench/results/0.5B-{t}.json'))
    pre = j['prefill'][0]['tokens_per_s'] if j.get('prefill') else float('nan')
    dec = j['decode']
    print(f"{t:6} {j['model']['weight_bytes']/1e6:10.1f} {pre:14.1f} " + " ".join(f"{d['tokens_per_s']:12.2f}" for d in dec)
          + "  " + " ".join(f"{d['pct_of_floor']:.0f}%" for d in dec))
PY
