#!/usr/bin/env bash
# Side-by-side CPU benchmark of falcon-h1 against llama.cpp on the same Falcon-H1 checkpoints
# (docs/llamacpp-comparison.md has the method and the figures).
#
# NOT part of the tests or CI: it downloads llama.cpp (vendored in the llama-cpp-python sdist on
# PyPI), torch and transformers (for llama.cpp's convert_hf_to_gguf.py), builds llama.cpp, and
# runs for tens of minutes. Run it by hand on an otherwise idle machine:
#
#   bash bench/llamacpp_compare.sh            # everything, from scratch or from the cache
#   MODELS=tiny TYPES=bf16 PP=512 bash bench/llamacpp_compare.sh   # a quick subset
#
# Environment (defaults in brackets):
#   LLAMACPP_DIR  cache: sdist, llama.cpp build, venv, checkpoints, GGUFs, results [/tmp/llamacpp]
#   LCPP_PY_VERSION  llama-cpp-python sdist version whose vendored llama.cpp is used [0.3.36]
#   FH1           our binary [build/falcon-h1], built by the caller (Release)
#   THREADS [2]   REPS: invocations per figure, best kept [3]
#   MODELS ["tiny 0.5b"]   tiny = models/falcon-h1-tiny; 0.5b = random weights, 0.5B release shape
#   TYPES ["bf16 q8_0 q4_0 q4_k_m"]   llama.cpp types; ours: bf16 = the HF checkpoint, the others
#                 through `falcon-h1 quantize` when the binary has it (q4_k_m -> our q4_k)
#   PP ["512 4096"] prefill lengths; those after the first only for LONG_PP_TYPES ["bf16"] and
#                 LONG_PP_MODELS ["tiny 0.5b"], timed once per llama-bench call (-r 1, no warm-up)
#   TG [128]      generated tokens for the decode figure
#   LLAMACPP_ARCH cmake ISA flags of the llama.cpp build [this CPU's AVX-512 set without AMX; see below]
#   PPL [1]       also run llama-perplexity and falcon-h1 perplexity on the tiny model
#   BENCH [1]     0: skip the speed measurements (only the perplexity check)
#   LOAD_MAX [0.3] LOAD_WAIT [60]: before each measurement wait (at most LOAD_WAIT s) until the
#                 1-minute load average is below LOAD_MAX, or the CPUs were >= 97% idle for 3 s
#                 (our own previous measurement keeps the load average up for minutes)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LLAMACPP_DIR=${LLAMACPP_DIR:-/tmp/llamacpp}
LCPP_PY_VERSION=${LCPP_PY_VERSION:-0.3.36}
FH1=${FH1:-$REPO/build/falcon-h1}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
MODELS=${MODELS:-"tiny 0.5b"}
TYPES=${TYPES:-"bf16 q8_0 q4_0 q4_k_m"}
PP=${PP:-"512 4096"}
LONG_PP_TYPES=${LONG_PP_TYPES:-"bf16"}
LONG_PP_MODELS=${LONG_PP_MODELS:-"tiny 0.5b"}
TG=${TG:-128}
PPL=${PPL:-1}
BENCH=${BENCH:-1}
LOAD_MAX=${LOAD_MAX:-0.3}
LOAD_WAIT=${LOAD_WAIT:-60}

LLAMACPP_ARCH=${LLAMACPP_ARCH:-"-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON
  -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
  -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"}

SRC=$LLAMACPP_DIR/llama_cpp_python-$LCPP_PY_VERSION/vendor/llama.cpp
BUILD=$LLAMACPP_DIR/build
VENV=$LLAMACPP_DIR/venv
WORK=$LLAMACPP_DIR/work
PY=$VENV/bin/python
mkdir -p "$LLAMACPP_DIR" "$WORK"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

[ -x "$FH1" ] || { echo "no $FH1: build falcon-h1 first (cmake -DCMAKE_BUILD_TYPE=Release)" >&2; exit 1; }
# Measure a copy, so that a rebuild of build/ during the run cannot mix two versions.
FH1_BUILT=$FH1
cp "$FH1" "$WORK/falcon-h1.bin"
# (the binary's build time and hash say which build it is; the repository's HEAD may be later)
FH1_VERSION="build of $(date -u -r "$FH1" +%Y-%m-%dT%H:%M:%SZ), sha256 $(sha256sum "$FH1" | cut -c1-12), repo HEAD $(git -C "$REPO" rev-parse --short HEAD 2> /dev/null || echo unknown)"
FH1=$WORK/falcon-h1.bin

# ---- 1. llama.cpp: sources from the llama-cpp-python sdist, build, converter venv ------------
if [ ! -d "$SRC" ]; then
  log "downloading llama-cpp-python $LCPP_PY_VERSION (sdist)"
  python3 -m pip download --no-binary :all: --no-deps "llama-cpp-python==$LCPP_PY_VERSION" -d "$LLAMACPP_DIR/dl"
  tar xzf "$LLAMACPP_DIR/dl/llama_cpp_python-$LCPP_PY_VERSION.tar.gz" -C "$LLAMACPP_DIR"
fi
grep -q LLM_ARCH_FALCON_H1 "$SRC/src/llama-arch.h" ||
  { echo "the llama.cpp in llama-cpp-python $LCPP_PY_VERSION has no Falcon-H1 support" >&2; exit 1; }
# The sdist has no .git; its CHANGELOG names the llama.cpp commit it vendors.
LCPP_COMMIT=$(sed -n "/^## \[$LCPP_PY_VERSION\]/,/^## \[/p" "$LLAMACPP_DIR/llama_cpp_python-$LCPP_PY_VERSION/CHANGELOG.md" |
  grep -o 'llama.cpp@[0-9a-f]*' | head -1 | cut -d@ -f2)
LCPP_COMMIT=${LCPP_COMMIT:-unknown}

if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-quantize" ] || [ ! -x "$BUILD/bin/llama-perplexity" ]; then
  log "building llama.cpp $LCPP_COMMIT (llama-bench, llama-quantize, llama-perplexity)"
  # GGML_NATIVE=ON would compile ggml's AMX kernels (this CPU reports AMX), and on this VM they die
  # with SIGILL at the first tileloadd (q4_0/q8_0 prefill). So: this CPU's ISA without AMX.
  # LLAMACPP_ARCH overrides it (e.g. LLAMACPP_ARCH=-DGGML_NATIVE=ON on a machine where AMX works).
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release $LLAMACPP_ARCH -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMIT="$LCPP_COMMIT" > "$LLAMACPP_DIR/cmake.log"
  cmake --build "$BUILD" -j2 --target llama-bench llama-quantize llama-perplexity > "$LLAMACPP_DIR/build.log"
fi

if [ ! -f "$VENV/.ready" ]; then
  log "venv for convert_hf_to_gguf.py (torch from PyPI, transformers, the vendored gguf-py)"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q "torch==2.15.0" "numpy~=2.2.6" "sentencepiece>=0.1.98,<0.3.0" "transformers==4.57.6" \
    "protobuf>=4.21.0,<5.0.0" safetensors "$SRC/gguf-py"
  touch "$VENV/.ready"
fi

# convert_hf_to_gguf.py identifies the BPE pre-tokenizer by hashing the tokens of a test string;
# the tiny model's own 4096-token tokenizer is not in its table, so it would refuse it. It uses
# the Falcon-H1 pre-tokenizer regex, which llama.cpp calls "falcon-h1": answer that when the hash
# is unknown (a warning is printed).
cat > "$WORK/convert_wrapper.py" <<'EOF'
import logging, sys
sys.path.insert(0, sys.argv.pop(1))          # the llama.cpp source dir
import conversion.base as base
_orig = base.TextModel.get_vocab_base_pre
def _pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        logging.getLogger("wrapper").warning("unknown BPE pre-tokenizer hash: using 'falcon-h1' (workaround)")
        return "falcon-h1"
base.TextModel.get_vocab_base_pre = _pre
import convert_hf_to_gguf
convert_hf_to_gguf.main()
EOF

# ---- 2. checkpoints and GGUFs ----------------------------------------------------------------
hf_dir() {  # model -> HF directory
  case $1 in
    tiny) echo "$REPO/models/falcon-h1-tiny" ;;
    0.5b) echo "$WORK/hf-0.5b-random" ;;
    *) echo "unknown model $1" >&2; exit 1 ;;
  esac
}
for M in $MODELS; do
  if [ "$M" = 0.5b ] && [ ! -f "$WORK/hf-0.5b-random/model.safetensors" ]; then
    log "writing the random 0.5B-shape checkpoint"
    "$PY" "$REPO/bench/make_random_checkpoint.py" --out "$WORK/hf-0.5b-random" --tokenizer-from "$REPO/models/falcon-h1-tiny"
  fi
  if [ ! -f "$WORK/$M-bf16.gguf" ]; then
    log "converting $M to GGUF bf16"
    "$PY" "$WORK/convert_wrapper.py" "$SRC" "$(hf_dir "$M")" --outtype bf16 --outfile "$WORK/$M-bf16.gguf" > "$WORK/convert-$M.log" 2>&1 ||
      { tail -20 "$WORK/convert-$M.log" >&2; exit 1; }
  fi
  for T in $TYPES; do
    [ "$T" = bf16 ] && continue
    if [ ! -f "$WORK/$M-$T.gguf" ]; then
      log "llama-quantize $M -> $T"
      "$BUILD/bin/llama-quantize" "$WORK/$M-bf16.gguf" "$WORK/$M-$T.gguf" "$(echo "$T" | tr a-z A-Z)" "$THREADS" > "$WORK/quantize-$M-$T.log" 2>&1 ||
        { tail -20 "$WORK/quantize-$M-$T.log" >&2; exit 1; }
    fi
  done
done

# Our quantized checkpoints, if this build has `falcon-h1 quantize`.
HAVE_FH1_QUANT=0
"$FH1" --help 2>&1 | grep -q '^ *quantize ' && HAVE_FH1_QUANT=1
fh1_type() { case $1 in q4_k_m) echo q4_k ;; *) echo "$1" ;; esac; }
fh1_model() {  # model type -> our model directory, or nothing
  if [ "$2" = bf16 ]; then hf_dir "$1"; return; fi
  [ $HAVE_FH1_QUANT = 1 ] || return 0
  local out="$WORK/fh1-$1-$(fh1_type "$2")"
  # (re-made when the binary is newer than the cached copy: its file format may have changed)
  if [ ! -e "$out.done" ] || [ "$FH1_BUILT" -nt "$out.done" ]; then
    log "falcon-h1 quantize $1 -> $(fh1_type "$2")"
    rm -rf "$out" "$out.done"
    "$FH1" quantize -m "$(hf_dir "$1")" --type "$(fh1_type "$2")" -o "$out" > "$WORK/fh1-quantize-$1-$2.log" 2>&1 ||
      { tail -5 "$WORK/fh1-quantize-$1-$2.log" >&2; return 0; }
    touch "$out.done"
  fi
  echo "$out"
}

# ---- 3. measurements -------------------------------------------------------------------------
busy_3s() {  # fraction of CPU time not idle over the next 3 s
  local a b
  a=($(head -1 /proc/stat)); sleep 3; b=($(head -1 /proc/stat))
  awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN { n = split(a, x, " "); split(b, y, " "); t = 0;
    for (i = 2; i <= n; i++) t += y[i] - x[i]; idle = (y[5] - x[5]) + (y[6] - x[6]);
    printf "%.3f", (t > 0) ? (1 - idle / t) : 0 }'
}
LOAD1=0; BUSY=0
wait_idle() {
  local t0=$SECONDS
  while :; do
    LOAD1=$(cut -d' ' -f1 /proc/loadavg); BUSY=$(busy_3s)
    awk -v l="$LOAD1" -v m="$LOAD_MAX" -v b="$BUSY" 'BEGIN { exit !(l < m || b <= 0.03) }' && return 0
    if [ $((SECONDS - t0)) -ge "$LOAD_WAIT" ]; then
      log "still busy after ${LOAD_WAIT}s (load $LOAD1, busy $BUSY): measuring anyway"; return 0
    fi
    sleep 5
  done
}

RESULTS=$WORK/results-$(date -u +%Y%m%dT%H%M%S).jsonl
: > "$RESULTS"
record() {  # engine model type test tokens_per_s
  printf '{"engine":"%s","model":"%s","type":"%s","test":"%s","tokens_per_s":%s,"load1":%s,"busy":%s}\n' \
    "$1" "$2" "$3" "$4" "${5:-null}" "${LOAD1:-null}" "${BUSY:-null}" >> "$RESULTS"
  log "$1 $2 $3 $4: $5 tokens/s (load $LOAD1, busy $BUSY)"
}

# llama-bench: -r 2 timed runs after its warm-up run (unless overridden); the best sample is kept.
llama_bench() {  # gguf -p N -n M [more llama-bench options]
  "$BUILD/bin/llama-bench" -m "$1" -t "$THREADS" -r 2 -o json "${@:2}" 2> /dev/null |
    "$PY" -c 'import json,sys; print(max(json.load(sys.stdin)[0]["samples_ts"]))'
}
# falcon-h1 bench: prefill = best of up to 5 runs within 2 s; decode = the median step of TG
# steps starting from an empty context (llama-bench's tg = the mean over TG steps).
fh1_bench() {  # dir pp N | dir tg N
  if [ "$2" = pp ]; then
    "$FH1" bench -m "$1" -t "$THREADS" -p "$3" -d "" --no-bandwidth --no-gemm --json 2> /dev/null |
      "$PY" -c 'import json,sys; print(json.load(sys.stdin)["prefill"][0]["tokens_per_s"])'
  else
    "$FH1" bench -m "$1" -t "$THREADS" -p "" -d 0 --max-steps "$3" --min-seconds 1e9 --no-bandwidth --no-gemm --json 2> /dev/null |
      "$PY" -c 'import json,sys; print(json.load(sys.stdin)["decode"][0]["tokens_per_s"])'
  fi
}

log "llama.cpp $LCPP_COMMIT (llama-cpp-python $LCPP_PY_VERSION) vs falcon-h1 $FH1_VERSION; $THREADS threads; results: $RESULTS"
for M in $MODELS; do
  [ "$BENCH" = 1 ] || break
  for T in $TYPES; do
    FD=$(fh1_model "$M" "$T")
    TESTS="pp${PP%% *} tg$TG"
    if [[ " $LONG_PP_TYPES " == *" $T "* && " $LONG_PP_MODELS " == *" $M "* ]]; then
      for p in ${PP#* }; do [ "$p" != "${PP%% *}" ] && TESTS="$TESTS pp$p"; done
    fi
    for TEST in $TESTS; do
      N=${TEST#??}
      for ((r = 1; r <= REPS; r++)); do
        wait_idle
        if [ "$TEST" = "pp${PP%% *}" ]; then v=$(llama_bench "$WORK/$M-$T.gguf" -p "$N" -n 0) || v=null
        elif [ "${TEST:0:2}" = pp ]; then v=$(llama_bench "$WORK/$M-$T.gguf" -p "$N" -n 0 -r 1 --no-warmup) || v=null
        else v=$(llama_bench "$WORK/$M-$T.gguf" -p 0 -n "$N") || v=null; fi
        record llama.cpp "$M" "$T" "$TEST" "$v"
        if [ -n "$FD" ]; then
          wait_idle
          if [ "${TEST:0:2}" = pp ]; then v=$(fh1_bench "$FD" pp "$N") || v=null
          else v=$(fh1_bench "$FD" tg "$N") || v=null; fi
          record falcon-h1 "$M" "$T" "$TEST" "$v"
        fi
      done
    done
  done
done

# ---- 4. perplexity on the same text (tiny model; a check of the conversion, not a race) --------
PPL_TXT=$REPO/tests/fixtures/perplexity/heldout_sample.txt
if [ "$PPL" = 1 ] && [[ " $MODELS " == *" tiny "* ]]; then
  for T in $TYPES; do
    # Its log goes through a logging thread and the last line ("Final estimate: PPL = ...") is
    # sometimes lost at exit; the running estimate "[3]10.1699," after the last window is the same.
    "$BUILD/bin/llama-perplexity" -m "$WORK/tiny-$T.gguf" -f "$PPL_TXT" -c 256 -b 256 -t "$THREADS" > "$WORK/ppl-tiny-$T.log" 2>&1 || true
    v=$(grep -a -o '\[[0-9]*\][0-9.]*' "$WORK/ppl-tiny-$T.log" | tail -1 | cut -d']' -f2) || true
    printf '{"engine":"llama.cpp","model":"tiny","type":"%s","test":"ppl","value":%s,"method":"llama-perplexity -c 256 (scores the second half of each 256-token window)"}\n' "$T" "${v:-null}" >> "$RESULTS"
    FD=$(fh1_model tiny "$T")
    if [ -n "$FD" ]; then
      # the same scheme as llama-perplexity, from our logits: windows of 256 tokens, the first
      # replaced by BOS, the predictions of the second half scored
      v=$("$PY" - "$FH1" "$FD" "$REPO/tests/fixtures/perplexity/ids.json" "$WORK/ppl-logits.npy" "$THREADS" <<'PYEOF'
import json, subprocess, sys
import numpy as np
fh1, model, ids_path, out, threads = sys.argv[1:6]
ids = json.load(open(ids_path)); ids = ids["ids"] if isinstance(ids, dict) else ids
n_ctx, nll = 256, []
for c in range(len(ids) // n_ctx):
    t = ids[c * n_ctx:(c + 1) * n_ctx]; t[0] = 1
    subprocess.run([fh1, "logits", "-m", model, "--ids", ",".join(map(str, t)), "--out", out, "-t", threads],
                   check=True, capture_output=True)
    lg = np.load(out).astype(np.float64)
    for j in range(n_ctx // 2, n_ctx - 1):
        m = lg[j].max(); nll.append(m + np.log(np.exp(lg[j] - m).sum()) - lg[j][t[j + 1]])
print(float(np.exp(np.mean(nll))))
PYEOF
      ) || v=null
      printf '{"engine":"falcon-h1","model":"tiny","type":"%s","test":"ppl","value":%s,"method":"falcon-h1 logits, scored like llama-perplexity -c 256"}\n' "$T" "$v" >> "$RESULTS"
      for W in 256 977; do
        v=$("$FH1" perplexity -m "$FD" "$PPL_TXT" --window $W --json -t "$THREADS" 2> /dev/null |
            "$PY" -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])') || v=null
        printf '{"engine":"falcon-h1","model":"tiny","type":"%s","test":"ppl","value":%s,"method":"falcon-h1 perplexity --window %s (scores every token)"}\n' "$T" "$v" "$W" >> "$RESULTS"
      done
    fi
  done
fi

# ---- 5. the table ----------------------------------------------------------------------------
"$PY" - "$RESULTS" "$LCPP_COMMIT" "$LCPP_PY_VERSION" "$THREADS" "$FH1_VERSION" <<'EOF'
import json, sys, collections, subprocess
path, commit, pyver, threads, fh1 = sys.argv[1:6]
rows = [json.loads(l) for l in open(path)]
best = collections.defaultdict(lambda: None)
load = {}
for r in rows:
    if r["test"] == "ppl" or r["tokens_per_s"] is None: continue
    k = (r["model"], r["type"], r["test"], r["engine"])
    if best[k] is None or r["tokens_per_s"] > best[k]:
        best[k] = r["tokens_per_s"]; load[k] = (r["load1"], r["busy"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"\nllama.cpp {commit} (llama-cpp-python {pyver} sdist) vs falcon-h1 {fh1}; {cpu}; {threads} threads; best of the runs")
print("load = 1-min load average / non-idle CPU fraction over the 3 s before the kept run\n")
print("| model | type | test | llama.cpp tok/s | falcon-h1 tok/s | falcon-h1 / llama.cpp | load (llama.cpp; falcon-h1) |")
print("|---|---|---|---:|---:|---:|---|")
keys = sorted({k[:3] for k in best}, key=lambda k: ([r["model"] for r in rows].index(k[0]), [r["type"] for r in rows].index(k[1]), [r["test"] for r in rows].index(k[2])))
for m, t, test in keys:
    a, b = best[(m, t, test, "llama.cpp")], best[(m, t, test, "falcon-h1")]
    la = load.get((m, t, test, "llama.cpp")); lb = load.get((m, t, test, "falcon-h1"))
    fmt = lambda x: "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"
    ratio = f"{b / a:.2f}" if a and b else "-"
    ld = lambda l: "-" if l is None else f"{l[0]:.2f}/{l[1]:.2f}"
    print(f"| {m} | {t} | {test} | {fmt(a)} | {fmt(b)} | {ratio} | {ld(la)}; {ld(lb)} |")
ppl = [r for r in rows if r["test"] == "ppl"]
if ppl:
    print("\nperplexity of tests/fixtures/perplexity/heldout_sample.txt (tiny model):")
    for r in ppl:
        print(f"  {r['engine']:9s} {r['type']:7s} {r['value']}   ({r['method']})")
EOF
