#!/usr/bin/env bash
# Every CUDA path of grulm, run and measured on a real NVIDIA GPU, in one go.
#
# Usage: scripts/gpu-check.sh OUT_DIR
#   Run from a bundle made by `make gpu-bundle` (the folder .gpu/: the stripped
#   grulm binary, configs/, bench/, this script and data/timemachine.txt), or
#   from the repository after `make build` (`make gpu-check` does that).
#   libtorch comes from the python3 that holds torch (LD_LIBRARY_PATH=.../torch/lib),
#   or from LIBTORCH/lib when set.
#
# Writes into OUT_DIR: logs/<check>.log for every command, checks.jsonl (one line
# per check: name, ok, figures), bench.jsonl (grulm bench --json-out),
# gpu-check.json (everything together) and summary.txt. Exits 1 if any check
# failed, and at once, with one line, on a machine without a GPU.
#
# A dry run of the script itself on a CPU (no figure means anything there):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_EPOCHS=3 GPU_CHECK_BENCH="--shape 4,5,8,28 --repeats 1 --rounds 1" scripts/gpu-check.sh /tmp/dry
set -uo pipefail

OUT="${1:?usage: scripts/gpu-check.sh OUT_DIR}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# The bundle holds everything next to the script; the repository one level up.
if [ -x "$HERE/grulm" ]; then ROOT="$HERE"; GRULM="$HERE/grulm"; else ROOT="$(dirname "$HERE")"; GRULM="$ROOT/target/release/grulm"; fi
GRULM="${GRULM_BIN:-$GRULM}"
cd "$ROOT" || exit 1
PY="${PYTHON:-python3}"
DEV="${GPU_CHECK_DEVICE:-cuda}"
SHORT=(${GPU_CHECK_EPOCHS:+--set train.epochs=$GPU_CHECK_EPOCHS})
read -r -a BENCH_SHAPES <<< "${GPU_CHECK_BENCH:---shape d2l --shape large --shape gpu}"

if [ "$DEV" = cuda ] && ! { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
  echo "gpu-check: no GPU found (nvidia-smi lists no NVIDIA GPU); this script needs one" >&2
  exit 1
fi
[ -x "$GRULM" ] || { echo "gpu-check: $GRULM not found; run make gpu-bundle (or make build) first" >&2; exit 1; }
if [ -n "${LIBTORCH:-}" ]; then
  TORCH_LIB="$LIBTORCH/lib"
else
  TORCH_LIB="$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)" \
    || { echo "gpu-check: $PY cannot import torch; set PYTHON or LIBTORCH" >&2; exit 1; }
fi
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -f data/timemachine.txt ] && export GRULM_DATA_DIR="$ROOT/data"

mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
RUNS="$OUT/runs"
rm -rf "$RUNS"
: > "$OUT/checks.jsonl"
FAILED=0
T_START=$(date +%s)

# record NAME OK(true|false) [JSON figures]
record() {
  local name="$1" ok="$2" figs="${3:-"{}"}"
  printf '{"check": "%s", "ok": %s, "figures": %s}\n' "$name" "$ok" "$figs" >> "$OUT/checks.jsonl"
  [ "$ok" = true ] || FAILED=1
  printf '%-28s %s\n' "$name" "$([ "$ok" = true ] && echo ok || echo FAILED)"
}

# run NAME TIMEOUT CMD...: runs CMD, logging to logs/NAME.log; returns its status.
run() {
  local name="$1" limit="$2"; shift 2
  local t0=$(date +%s%N)
  echo "\$ $*" > "$OUT/logs/$name.log"
  timeout "$limit" "$@" >> "$OUT/logs/$name.log" 2>&1
  local rc=$?
  echo "[exit $rc after $(( ($(date +%s%N) - t0) / 1000000 )) ms]" >> "$OUT/logs/$name.log"
  return $rc
}

# Python helpers over the run directories (the image's python3 has no extra needs).
metrics() { # metrics RUN_DIR -> JSON figures of the last epoch and the run
  "$PY" - "$1" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
last = rows[-1]
tps = [r["tokens_per_s"] for r in rows]
print(json.dumps({"epochs": last["epoch"], "train_ppl": last["train_ppl"], "elapsed_s": round(last["elapsed_s"], 2),
                  "tokens_per_s_median": round(statistics.median(tps)), "tokens_per_s_last": round(tps[-1])}))
EOF
}
same_metrics() { # same_metrics RUN_A RUN_B -> "true"/"false": identical but for timing and memory
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
def load(d):
    out = []
    for l in open(d + "/metrics.jsonl"):
        r = json.loads(l)
        for k in ("tokens_per_s", "elapsed_s", "peak_rss_mib"):
            r.pop(k, None)
        out.append(r)
    return out
print("true" if load(sys.argv[1]) == load(sys.argv[2]) else "false")
EOF
}
ppl_of() { sed -n 's/^perplexity \([0-9.]*\) .*/\1/p' "$1" | head -1; }

echo "gpu-check: $GRULM, libtorch from $TORCH_LIB, results in $OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/logs/nvidia-smi.log" 2>&1 || true

# 1. grulm info: libtorch 2.11.0, CUDA, cuDNN, the GPU.
run info 60 "$GRULM" info
log="$OUT/logs/info.log"
ok=false
grep -q '^libtorch *2\.11\.0' "$log" && { [ "$DEV" != cuda ] || { grep -q '^CUDA available *yes' "$log" \
  && grep -q '^cuDNN available *yes' "$log" && grep -q '^GPU 0 ' "$log"; }; } && ok=true
record info $ok "{\"gpu\": \"$(sed -n 's/^GPU 0 *//p' "$log")\", \"shim\": \"$(sed -n 's/^CUDA shim *//p' "$log")\"}"

# 2. Parity on CUDA: f64 (1e-10) and f32 (5e-5, TF32 off; the TF32 default shown), 1 and 2
#    layers, for each cell libtorch has (parity-f64 is the GRU's, parity-lstm-f64 the LSTM's, ...).
for cell in gru lstm rnn; do
  for dt in f64 f32; do
    name="parity-$dt"; [ "$cell" = gru ] || name="parity-$cell-$dt"
    run "$name" 120 "$GRULM" parity --device "$DEV" --dtype "$dt" --layers 2 --cell "$cell" && ok=true || ok=false
    worst=$(grep -B0 'tolerance\|largest' "$OUT/logs/$name.log" | tr '\n' ' ' | sed 's/"/'"'"'/g')
    record "$name" $ok "{\"summary\": \"$worst\"}"
  done
done

# 3. d2l's experiment on CUDA, both models: 500 epochs, final perplexity <= 1.1.
for m in scratch concise; do
  run "train-$m" 300 "$GRULM" train --config "configs/gru-$m.toml" --device "$DEV" --out "$RUNS/$m" --quiet "${SHORT[@]}" && ok=true || ok=false
  figs=$(metrics "$RUNS/$m" 2>/dev/null || echo '{}')
  if $ok; then
    "$PY" -c "import json,sys; f=json.loads(sys.argv[1]); sys.exit(0 if round(f['train_ppl'],1) <= 1.1 else 1)" "$figs" || ok=false
    grep -q 'contiguous chunk' "$OUT/logs/train-$m.log" && ok=false # cuDNN re-flattening its weights every call
  fi
  record "train-$m" $ok "$figs"
done

# 4. sample and eval of those runs on CUDA and on CPU: checkpoints are device-independent.
for m in scratch concise; do
  ok=true
  for d in "$DEV" cpu; do
    run "sample-$m-$d" 60 "$GRULM" sample --run "$RUNS/$m" --device "$d" --len 50 || ok=false
    run "eval-$m-$d" 60 "$GRULM" eval --run "$RUNS/$m" --device "$d" || ok=false
  done
  a=$(ppl_of "$OUT/logs/eval-$m-$DEV.log"); b=$(ppl_of "$OUT/logs/eval-$m-cpu.log")
  sa=$(sed -n 2p "$OUT/logs/sample-$m-$DEV.log"); sb=$(sed -n 2p "$OUT/logs/sample-$m-cpu.log")
  "$PY" -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b) <= 1e-3*b else 1)" "${a:-nan}" "${b:-nan}" || ok=false
  same_sample=$([ "$sa" = "$sb" ] && echo true || echo false)
  record "cuda-run-on-cpu-$m" $ok "{\"eval_ppl_cuda\": \"$a\", \"eval_ppl_cpu\": \"$b\", \"same_greedy_sample\": $same_sample, \"sample_cuda\": \"$sa\"}"
done

# 5. --resume on CUDA: 250 epochs, then on to 500 from the checkpoint.
ok=true
half="${GPU_CHECK_EPOCHS:-250}"
run resume-1 200 "$GRULM" train --config configs/gru-scratch.toml --device "$DEV" --out "$RUNS/resume" --set train.epochs="$half" --quiet || ok=false
run resume-2 200 "$GRULM" train --config configs/gru-scratch.toml --device "$DEV" --out "$RUNS/resume" --resume --set train.epochs=$((2 * half)) --quiet || ok=false
grep -q "epochs $((half + 1))\.\.=$((2 * half))" "$OUT/logs/resume-2.log" || ok=false
figs=$(metrics "$RUNS/resume" 2>/dev/null || echo '{}')
"$PY" -c "import json,sys; f=json.loads(sys.argv[1]); sys.exit(0 if f.get('epochs')==$((2 * half)) and round(f['train_ppl'],1) <= 1.1 else 1)" "$figs" || ok=false
record resume $ok "$figs"

# 6. A run trained on the CPU, sampled and evaluated on CUDA (and on the CPU).
ok=true
run train-cpu 300 "$GRULM" train --config configs/gru-scratch.toml --device cpu --out "$RUNS/cpu" --set train.epochs=20 --quiet "${SHORT[@]}" || ok=false
for d in "$DEV" cpu; do
  run "eval-cpu-run-$d" 60 "$GRULM" eval --run "$RUNS/cpu" --device "$d" || ok=false
  run "sample-cpu-run-$d" 60 "$GRULM" sample --run "$RUNS/cpu" --device "$d" || ok=false
done
a=$(ppl_of "$OUT/logs/eval-cpu-run-$DEV.log"); b=$(ppl_of "$OUT/logs/eval-cpu-run-cpu.log")
"$PY" -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b) <= 1e-3*b else 1)" "${a:-nan}" "${b:-nan}" || ok=false
record cpu-run-on-cuda $ok "{\"eval_ppl_cuda\": \"$a\", \"eval_ppl_cpu\": \"$b\"}"

# 6b. The minimal cells (minGRU, minLSTM: the log-depth scan in libtorch operations, under the
#     CUDA graph), 2 layers with dropout, trained on CUDA and evaluated on CUDA and on the CPU
#     (the CPU engine's sequential scan): the same perplexity.
for cell in mingru minlstm; do
  ok=true
  run "train-$cell" 200 "$GRULM" train --config "configs/$cell-scratch.toml" --device "$DEV" --out "$RUNS/$cell" \
    --set model.num_layers=2 --set model.dropout=0.1 --set train.epochs=50 --quiet "${SHORT[@]}" || ok=false
  for d in "$DEV" cpu; do
    run "eval-$cell-$d" 60 "$GRULM" eval --run "$RUNS/$cell" --device "$d" || ok=false
  done
  a=$(ppl_of "$OUT/logs/eval-$cell-$DEV.log"); b=$(ppl_of "$OUT/logs/eval-$cell-cpu.log")
  "$PY" -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b) <= 1e-3*b else 1)" "${a:-nan}" "${b:-nan}" || ok=false
  record "minimal-$cell" $ok "{\"eval_ppl_cuda\": \"$a\", \"eval_ppl_cpu\": \"$b\", \"train\": $(metrics "$RUNS/$cell" 2>/dev/null || echo '{}')}"
done

# 6c. Weight drop (model.weight_drop): the scratch GRU (its masked W_h under the CUDA graph) and
#     the built-in LSTM (cuDNN handed weight_hh ⊙ M, outside its flattened buffer: the log must not
#     warn of re-flattening), 2 layers, trained on CUDA, evaluated on CUDA and on the CPU.
for m in scratch concise; do
  ok=true
  extra=(); [ "$m" = concise ] && extra=(--set model.cell=\"lstm\")
  run "train-wd-$m" 200 "$GRULM" train --config "configs/gru-$m.toml" --device "$DEV" --out "$RUNS/wd-$m" "${extra[@]}" \
    --set model.num_layers=2 --set model.weight_drop=0.3 --set train.epochs=50 --quiet "${SHORT[@]}" || ok=false
  grep -q 'contiguous chunk' "$OUT/logs/train-wd-$m.log" && ok=false
  for d in "$DEV" cpu; do
    run "eval-wd-$m-$d" 60 "$GRULM" eval --run "$RUNS/wd-$m" --device "$d" || ok=false
  done
  a=$(ppl_of "$OUT/logs/eval-wd-$m-$DEV.log"); b=$(ppl_of "$OUT/logs/eval-wd-$m-cpu.log")
  "$PY" -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b) <= 1e-3*b else 1)" "${a:-nan}" "${b:-nan}" || ok=false
  record "weight-drop-$m" $ok "{\"eval_ppl_cuda\": \"$a\", \"eval_ppl_cpu\": \"$b\", \"train\": $(metrics "$RUNS/wd-$m" 2>/dev/null || echo '{}')}"
done

# 7. train.deterministic: twice with the same seed -> bit-identical metrics; the
#    CUDA graph and eager steps agree bit for bit there too. Without it: reported.
for m in scratch concise; do
  common=(train --config "configs/gru-$m.toml" --device "$DEV" --set train.epochs=100 --quiet "${SHORT[@]}")
  run "det-$m-1" 120 "$GRULM" "${common[@]}" --out "$RUNS/det-$m-1" --set train.deterministic=true
  run "det-$m-2" 120 "$GRULM" "${common[@]}" --out "$RUNS/det-$m-2" --set train.deterministic=true
  run "det-$m-eager" 120 "$GRULM" "${common[@]}" --out "$RUNS/det-$m-eager" --set train.deterministic=true --set train.cuda_graph=false
  run "nondet-$m-1" 120 "$GRULM" "${common[@]}" --out "$RUNS/nondet-$m-1"
  run "nondet-$m-2" 120 "$GRULM" "${common[@]}" --out "$RUNS/nondet-$m-2"
  same=$(same_metrics "$RUNS/det-$m-1" "$RUNS/det-$m-2" 2>/dev/null || echo false)
  graph_eager=$(same_metrics "$RUNS/det-$m-1" "$RUNS/det-$m-eager" 2>/dev/null || echo false)
  nondet=$(same_metrics "$RUNS/nondet-$m-1" "$RUNS/nondet-$m-2" 2>/dev/null || echo false)
  ok=false; [ "$same" = true ] && [ "$graph_eager" = true ] && ok=true
  record "deterministic-$m" $ok "{\"deterministic_identical\": $same, \"graph_equals_eager\": $graph_eager, \"nondeterministic_identical\": $nondet, \"det\": $(metrics "$RUNS/det-$m-1" 2>/dev/null || echo '{}'), \"det_eager\": $(metrics "$RUNS/det-$m-eager" 2>/dev/null || echo '{}'), \"nondet\": $(metrics "$RUNS/nondet-$m-1" 2>/dev/null || echo '{}')}"
done

# 8. The bench beside PyTorch in Python on the same GPU: d2l, large and a GPU-sized shape.
run bench 420 "$GRULM" bench --device "$DEV" "${BENCH_SHAPES[@]}" \
  --models scratch,scratch-eager,scratch-after,builtin,builtin-eager,lstm,lstm-builtin,rnn,rnn-builtin,mingru,minlstm --compare-python "$PY" --json-out "$OUT/bench.jsonl" && ok=true || ok=false
record bench $ok "{\"lines\": $(wc -l < "$OUT/bench.jsonl" 2>/dev/null || echo 0)}"

# Everything together, with the speed targets of issue 9 (reported, not checks).
"$PY" - "$OUT" "$(( $(date +%s) - T_START ))" <<'EOF' > "$OUT/summary.txt"
import json, os, sys
out, seconds = sys.argv[1], int(sys.argv[2])
checks = [json.loads(l) for l in open(os.path.join(out, "checks.jsonl"))]
bench = [json.loads(l) for l in open(os.path.join(out, "bench.jsonl"))] if os.path.exists(os.path.join(out, "bench.jsonl")) else []
def find(side, model, shape):
    for r in bench:
        if r["side"] == side and r["model"] == model and (r["B"], r["T"], r["H"]) == shape:
            return r["tokens_per_s"]
targets = []
for shape in sorted({(r["B"], r["T"], r["H"]) for r in bench}):
    g = lambda m: find("grulm", m, shape)
    p = lambda m: find("python", m, shape)
    if g("builtin") and p("builtin"):
        targets.append({"shape": shape, "target": "builtin >= 1.0x nn.GRU", "ratio": round(g("builtin") / p("builtin"), 2), "met": g("builtin") >= p("builtin")})
    if g("scratch") and p("scratch"):
        targets.append({"shape": shape, "target": "scratch >= 5x d2l scratch", "ratio": round(g("scratch") / p("scratch"), 2), "met": g("scratch") >= 5 * p("scratch")})
    if shape == (32, 35, 256) and g("scratch") and g("builtin"):
        r = g("scratch") / g("builtin")
        targets.append({"shape": shape, "target": "scratch >= 0.5x grulm cuDNN (stretch 1.0x)", "ratio": round(r, 2), "met": r >= 0.5})
info = open(os.path.join(out, "logs", "info.log")).read()
smi = open(os.path.join(out, "logs", "nvidia-smi.log")).read()
result = {"seconds": seconds, "ok": all(c["ok"] for c in checks), "checks": checks, "targets": targets, "bench": bench,
          "info": info, "nvidia_smi": smi}
json.dump(result, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
for c in checks:
    print(f"{c['check']:<28} {'ok' if c['ok'] else 'FAILED'}  {json.dumps(c['figures'])}")
for t in targets:
    print(f"target {t['target']:<44} {str(t['shape']):<18} {t['ratio']:>6}x  {'met' if t['met'] else 'NOT met'}")
print(f"{'all checks passed' if result['ok'] else 'SOME CHECKS FAILED'} in {seconds} s")
EOF
cat "$OUT/summary.txt"
cat "$OUT/logs/bench.log" 2>/dev/null | sed -n '/^grulm bench/,$p'
exit $FAILED
