#!/usr/bin/env bash
# sieve's GPU checks, for a machine with an NVIDIA GPU and driver (CI has none; run this there).
#  1. gpu-bench: every kernel against an f64 CPU reference on fresh random inputs, then timings
#     against cuBLAS (CUDA events over graph replays) at Llama-3-8B and SmolLM2 shapes;
#  2. the loaded model decoding on the GPU (fp16 weights and KV cache, one CUDA graph per step):
#     logits against the CPU f32 path, then GPU step times, for dense, TEAL and CATS (the
#     thresholds come from a profile calibrated here on the model's own text);
#  3. `sieve serve --device cuda --gpu-streams 2`: three greedy streams at once through gRPC
#     (two interleaved, one waiting) each equal `generate --device cuda` on their prompt, Info
#     names the GPU, a CATS stream reports its speedup, concurrent clients all finish;
#  4. a synthetic Llama-3-8B (random weights, real shape) against the bandwidth roofline.
# Every command exits non-zero when a check fails.
#
# usage: scripts/gpu-check.sh [SIEVE_BIN] [MODEL_GGUF] [OUT_DIR]
#   SIEVE_BIN   a sieve built with `cargo build --release --features cuda` (default target/release/sieve)
#   MODEL_GGUF  default: the installed SmolLM2; a machine that cannot receive the 98 MB file gets
#               a copy of its first blocks: `python3 scripts/gguf_truncate.py IN OUT 6`
#   OUT_DIR     where the JSON and tables go (default gpu-results)
#   SIEVE_GPU_STEPS  which parts to run (default "kernels model serve synthetic"; serve needs model's
#               profile and predictors, so it runs the calibration itself when model is left out)
set -euo pipefail
BIN="${1:-target/release/sieve}"
MODEL="${2:-${SIEVE_MODEL:-$HOME/.cache/sieve/models/SmolLM2-135M-Instruct.Q4_1.gguf}}"
OUT="${3:-gpu-results}"
mkdir -p "$OUT"
say() { printf '[gpu-check] %s\n' "$*" >&2; }
STEPS=" ${SIEVE_GPU_STEPS:-kernels model serve synthetic} "
want() { [[ "$STEPS" == *" $1 "* ]]; }

if want kernels; then
say "kernels: correctness and timings"
"$BIN" gpu-bench | tee "$OUT/gpu-bench.md"
"$BIN" gpu-bench --json --replays 10 > "$OUT/gpu-bench.json"
fi

PROFILE="$OUT/profile.json"
if want model || want serve; then
say "profile and predictors for $MODEL"
"$BIN" --model "$MODEL" calibrate --tokens "${SIEVE_GPU_CALIBRATION_TOKENS:-4096}" --out "$PROFILE" >&2
"$BIN" --model "$MODEL" train-predictors --profile "$PROFILE" --tokens "${SIEVE_GPU_PREDICTOR_TOKENS:-4096}" \
  --rank 64 --out "$OUT/predictors" >&2
fi

if want model; then
say "model on the GPU: $MODEL"
for spec in dense:0 teal:0.25 teal:0.5 teal-uniform:0.5 cats:0.25 cats:0.5 predictor:0.5; do
  method="${spec%%:*}"; s="${spec##*:}"
  say "bench decode --device cuda --method $method --sparsity $s"
  "$BIN" --model "$MODEL" bench decode --device cuda --method "$method" --sparsity "$s" --profile "$PROFILE" \
    --predictors "$OUT/predictors" --prompt-tokens 64 --new-tokens 192 --runs 5 --json > "$OUT/decode-$method-$s.json"
  python3 - "$OUT/decode-$method-$s.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for key in ("dense_check", "method_check"):
    c = r.get(key)
    if not c:
        continue
    print(f"  {r['method']} {r['sparsity']} {key}: max rel diff {c['max_rel_diff']:.2e}, min cosine {c['min_cosine']:.5f}, top-1 {c['top1_agreement']:.3f}")
    if key == "dense_check" and (c["min_cosine"] < 0.999 or c["top1_agreement"] < 0.95):
        sys.exit(f"dense GPU logits disagree with the CPU f32 path: {c}")
    if key == "method_check" and c["min_cosine"] < 0.99:
        sys.exit(f"sparse GPU logits disagree with the CPU f32 path: {c}")
print(f"  dense {r['dense_tok_s']:.0f} tok/s, {r['method']} {r['method_tok_s']:.0f} tok/s, speedup {r['decode_speedup']:.2f}x")
PY
done
fi

if want serve; then
say "serve --device cuda"
"$BIN" --model "$MODEL" serve --device cuda --gpu-streams 2 --addr 127.0.0.1:0 --profile "$PROFILE" \
  --predictors "$OUT/predictors" > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
ADDR=""
for _ in $(seq 1 240); do
  ADDR="$(sed -n 's/^sieve listening on //p' "$OUT/serve.log")"
  [ -n "$ADDR" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.log" >&2; echo "serve --device cuda did not start" >&2; exit 1; }
  sleep 0.5
done
[ -n "$ADDR" ] || { echo "serve --device cuda did not start in 120 s" >&2; exit 1; }
C=(--model "$MODEL" client)
"$BIN" "${C[@]}" info --addr "http://$ADDR" --json > "$OUT/serve-info.json"
# Three greedy streams at once on two slots (two take turns in their own KV caches, the third
# waits): each must equal generate --device cuda on its prompt.
PROMPTS=("The capital of France is" "Once upon a time, in a small village" "The capital of France is")
for i in 0 1 2; do
  "$BIN" "${C[@]}" generate --addr "http://$ADDR" --max-tokens 24 --temperature 0 "${PROMPTS[$i]}" \
    > "$OUT/serve-stream-$i.txt" &
  PIDS[$i]=$!
done
for i in 0 1 2; do wait "${PIDS[$i]}"; done
for i in 0 1 2; do
  want="$("$BIN" --model "$MODEL" generate --device cuda --max-tokens 24 --temperature 0 "${PROMPTS[$i]}")"
  got="$(cat "$OUT/serve-stream-$i.txt")"
  [ "$(echo "$want" | tr -d '[:space:]')" = "$(echo "$got" | tr -d '[:space:]')" ] \
    || { printf 'gRPC stream %s differs from generate --device cuda:\n%s\n---\n%s\n' "$i" "$want" "$got" >&2; exit 1; }
done
rm -f "$OUT"/serve-stream-*.txt
PROMPT="${PROMPTS[0]}"
"$BIN" "${C[@]}" generate --addr "http://$ADDR" --max-tokens 64 --method cats --sparsity 0.5 --json "$PROMPT" \
  > "$OUT/serve-cats.json"
"$BIN" --model "$MODEL" loadtest --addr "http://$ADDR" --clients 8 --duration 10 --max-tokens 32 --json \
  > "$OUT/serve-loadtest.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
info = json.load(open(f"{out}/serve-info.json"))
gpu = info.get("hardware", {}).get("gpu", "")
if not gpu:
    sys.exit(f"Info names no GPU: {info.get('hardware')}")
cats = json.load(open(f"{out}/serve-cats.json"))
t = cats["summary"]["timing"]
print(f"  serve on {gpu}: cats 0.5 stream {t['decode_tok_s']:.0f} tok/s, GPU dense reference {t['dense_decode_tok_s']:.0f} tok/s, speedup {t['speedup']:.2f}x")
lt = json.load(open(f"{out}/serve-loadtest.json"))
print(f"  loadtest: {json.dumps({k: v for k, v in lt.items() if not isinstance(v, (list, dict))})}")
PY
kill $SERVER; wait $SERVER 2>/dev/null || true
trap - EXIT
fi

if want synthetic; then
say "synthetic Llama-3-8B"
"$BIN" bench gpu-synthetic --methods teal-uniform:0.25,teal-uniform:0.5,teal-uniform:0.75,cats:0.5 | tee "$OUT/synthetic-8b.md"
"$BIN" bench gpu-synthetic --methods teal-uniform:0.5 --steps 32 --json > "$OUT/synthetic-8b.json"
fi
say "all GPU checks passed; results in $OUT"
