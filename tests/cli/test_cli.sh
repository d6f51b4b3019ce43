#!/usr/bin/env bash
# The CLI end to end: real runs give the reference's tokens; bad input gives a clear message and
# exit code 1 or 2 (never a crash: a signal would give >= 128).
set -u
BIN=$1
FIX=$2
M=$FIX/models/norm_off_g1_tied
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0
fail=0

# expect_fail "what" "fragment of stderr" cmd...
expect_fail() {
  local what=$1 frag=$2
  shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  if [[ $rc -ge 1 && $rc -lt 128 ]] && grep -qF -- "$frag" "$TMP/err"; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAIL: $what (exit $rc), stderr: $(head -c 400 "$TMP/err")"
  fi
}

expect_ok() {
  local what=$1
  shift
  if "$@" >"$TMP/out" 2>"$TMP/err"; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAIL: $what (exit $?), stderr: $(head -c 400 "$TMP/err")"
  fi
}

# Greedy generation gives transformers' tokens (the reference.json of the fixture).
flat=$(tr -d ' \n' <"$M/reference.json")
ref_prompt=$(echo "$flat" | grep -o '"greedy_prompt_ids":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
ref_ids=$(echo "$flat" | grep -o '"greedy_ids":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
n=$(echo "$ref_ids" | tr ',' '\n' | wc -l)
expect_ok "generate --json" "$BIN" generate -m "$M" --ids "$ref_prompt" -n "$n" --ignore-eos --json
got=$(tail -n 1 "$TMP/out" | grep -o '"ids":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
if [[ "$got" == "$ref_ids" ]]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: greedy ids $got != $ref_ids"; fi
expect_ok "generate --prompt-chunk 2" "$BIN" generate -m "$M" --ids "$ref_prompt" -n "$n" --ignore-eos --json --prompt-chunk 2
got=$(tail -n 1 "$TMP/out" | grep -o '"ids":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
if [[ "$got" == "$ref_ids" ]]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: greedy ids in 2-token calls $got != $ref_ids"; fi

expect_ok "info" "$BIN" info -m "$M" --ctx 1000
grep -q "parameters" "$TMP/out" && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: info output"; }
expect_ok "info --json" "$BIN" info -m "$M" --json
expect_ok "logits" "$BIN" logits -m "$M" --ids 1,2,3 --out "$TMP/l.npy"
size=$(stat -c %s "$TMP/l.npy")
vocab=$(grep -o '"vocab_size": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
if [[ $size -eq $((128 + 3 * vocab * 4)) ]]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: logits file size $size"; fi
expect_ok "sampling with a seed" "$BIN" generate -m "$M" --ids 1,2,3 -n 5 --temperature 0.8 --top-k 20 --top-p 0.9 --min-p 0.01 --seed 7 --json
a=$(tail -n 1 "$TMP/out")
"$BIN" generate -m "$M" --ids 1,2,3 -n 5 --temperature 0.8 --top-k 20 --top-p 0.9 --min-p 0.01 --seed 7 --json >"$TMP/out2" 2>/dev/null
b=$(tail -n 1 "$TMP/out2")
a_ids=$(echo "$a" | grep -o '"ids":\[[^]]*\]'); b_ids=$(echo "$b" | grep -o '"ids":\[[^]]*\]')
if [[ -n "$a_ids" && "$a_ids" == "$b_ids" ]]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: same seed, different ids: $a_ids / $b_ids"; fi

# Bad input.
expect_fail "missing model dir" "not a directory" "$BIN" generate -m "$TMP/nope" --ids 1,2
expect_fail "bad id list" "not a token id" "$BIN" generate -m "$M" --ids 1,x,3
expect_fail "id outside the vocabulary" "outside the vocabulary" "$BIN" generate -m "$M" --ids 1,999999
expect_fail "empty ids" "no token ids" "$BIN" logits -m "$M" --ids "" --out "$TMP/x.npy"
expect_fail "prompt longer than the context" "context length" "$BIN" generate -m "$M" --ids 1,2,3,4,5 --ctx 3
expect_fail "unknown option" "" "$BIN" generate -m "$M" --ids 1 --bogus
expect_fail "zero prompt chunk" "prompt-chunk" "$BIN" generate -m "$M" --ids 1 --prompt-chunk 0
expect_ok "bf16 KV cache on the CPU" "$BIN" generate -m "$M" --ids 1,2 -n 2 --kv-cache bf16
expect_fail "unknown KV cache type" "kv-cache" "$BIN" generate -m "$M" --ids 1,2 --kv-cache f8
expect_ok "f32 KV cache on the CPU" "$BIN" generate -m "$M" --ids 1,2 -n 2 --kv-cache f32
expect_ok "8-bit KV cache on the CPU" "$BIN" generate -m "$M" --ids 1,2,3,4,5 -n 3 --kv-cache q8 --prompt-chunk 2
expect_fail "no subcommand" "" "$BIN"
mkdir -p "$TMP/bad"
echo '{"model_type": "llama"}' >"$TMP/bad/config.json"
expect_fail "unknown model_type" "falcon_h1" "$BIN" info -m "$TMP/bad"
echo '{"model_type": "falcon_h1", ' >"$TMP/bad/config.json"
expect_fail "truncated config" "invalid JSON" "$BIN" info -m "$TMP/bad"
# A parser's message quotes what it read: invalid UTF-8 there reaches the terminal replaced.
printf '{"model_type": "falcon\xff\xfe_h1"}' >"$TMP/bad/config.json"
expect_fail "invalid UTF-8 in config" "invalid JSON" "$BIN" info -m "$TMP/bad"
if iconv -f UTF-8 -t UTF-8 "$TMP/err" >/dev/null 2>&1; then pass=$((pass + 1)); else
  fail=$((fail + 1))
  echo "FAIL: the message about invalid UTF-8 is not valid UTF-8 itself"
fi
cp "$M/config.json" "$TMP/bad/config.json"
head -c 1000 "$M/model.safetensors" >"$TMP/bad/model.safetensors"
expect_fail "truncated weights" "model.safetensors" "$BIN" generate -m "$TMP/bad" --ids 1
printf '\xff\xff\xff\xff\xff\xff\xff\x7f{}' >"$TMP/bad/model.safetensors"
expect_fail "absurd header" "absurd" "$BIN" generate -m "$TMP/bad" --ids 1

# Text in, text out: a fixture checkpoint with a 300-token byte-level BPE tokenizer.
TM=$TMP/textmodel
mkdir -p "$TM"
cp "$FIX"/models/norm_gate_after_g2_untied_bias/* "$TM"/
cp "$FIX"/tokenizer/bytelevel_digits_punct_300/tokenizer.json "$TM"/
expect_ok "tokenize" "$BIN" tokenize -m "$TM" --text "Hello, world 123"
ids=$(tail -n 1 "$TMP/out")
[[ "$ids" == "[39,68,75,75,78,11,280,270,75,67,220,16,17,18]" ]] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: tokenize gave $ids"; }
expect_ok "detokenize" "$BIN" detokenize -m "$TM" --ids "$ids"
[[ "$(cat "$TMP/out")" == "Hello, world 123" ]] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: detokenize gave $(cat "$TMP/out")"; }
expect_ok "generate -p" "$BIN" generate -m "$TM" -p "Once upon a time" -n 8 --json
grep -q '"text":' "$TMP/out" && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: generate -p --json has no text"; }
expect_ok "generate --chat" "$BIN" generate -m "$TM" -p "Hi" --chat --system "Be brief." -n 4
printf 'hello\n/reset\nagain\n/exit\n' >"$TMP/chat_in"
expect_ok "chat" "$BIN" chat -m "$TM" -n 4 --stats <"$TMP/chat_in"
grep -q "conversation reset" "$TMP/err" && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: chat /reset"; }
# quantize: a working run, then bad requests.
expect_ok "quantize q8_0" "$BIN" quantize -m "$M" --type q8_0 -o "$TMP/q8"
expect_ok "generate from the quantized copy" "$BIN" generate -m "$TMP/q8" --ids 1,2,3 -n 4
expect_fail "quantize: unknown type" "q5_1" "$BIN" quantize -m "$M" --type q5_1 -o "$TMP/q"
expect_fail "quantize: same directory" "must differ" "$BIN" quantize -m "$TMP/q8" --type q4_0 -o "$TMP/q8"
expect_fail "quantize: already quantized" "already" "$BIN" quantize -m "$TMP/q8" --type q4_0 -o "$TMP/q4"
expect_fail "quantize: missing input" "not a directory" "$BIN" quantize -m "$TMP/nope" --type q8_0 -o "$TMP/q"

expect_fail "text prompt without a tokenizer" "no tokenizer.json" "$BIN" generate -m "$M" -p "hello"
expect_fail "--chat without -p" "--chat needs" "$BIN" generate -m "$M" --ids 1,2 --chat
expect_fail "no prompt at all" "give a prompt" "$BIN" generate -m "$M"
printf '{"version": "1.0", "model": {"type": "WordPiece", "vocab": {}}}' >"$TMP/bad/tokenizer.json"
expect_fail "unsupported tokenizer model" "WordPiece" "$BIN" tokenize -m "$TMP/bad" --text "x"
expect_fail "the tokenizer error names the file" "$TMP/bad/tokenizer.json:" "$BIN" tokenize -m "$TMP/bad" --text "x"

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
