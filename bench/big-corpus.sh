#!/usr/bin/env bash
# Big corpora: trains grulm on a generated text of about 100 MB (raw
# preprocessing, the default GRU with H=256) for a while, stops it with SIGINT
# (the clean interruption a user would use) and reports the load time, the peak
# RSS and the training throughput.
#
#   bench/big-corpus.sh [SECONDS=90] [MEGABYTES=100]
#
# The text is many copies of The Time Machine (from $GRULM_DATA_DIR, else
# ../shared/data, else data/), each with its own noise: its lines shuffled and
# 1% of its characters replaced, so no two copies are alike. It is written to a
# temporary directory and removed afterwards; it is never committed.
# Needs the release binary (make build) and /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-90}
mb=${2:-100}
grulm=${GRULM_BIN:-target/release/grulm}  # GRULM_BIN: another build, to compare
[ -x "$grulm" ] || { echo "big-corpus.sh: build grulm first (make build)" >&2; exit 2; }
src=""
for d in "${GRULM_DATA_DIR:-}" ../shared/data data; do
  if [ -n "$d" ] && [ -f "$d/timemachine.txt" ]; then src="$d/timemachine.txt"; break; fi
done
[ -n "$src" ] || { echo "big-corpus.sh: no timemachine.txt (set GRULM_DATA_DIR)" >&2; exit 2; }
eval "$(scripts/setup-libtorch.sh)" # libtorch's libraries for the binary
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$src" "$work/big.txt" "$mb" <<'EOF'
import random, sys
src, dst, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(src, encoding="utf-8").read().splitlines(keepends=True)
alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"-\n"
with open(dst, "w", encoding="utf-8") as out:
    size, copy = 0, 0
    while size < mb * 1_000_000:
        rng = random.Random(copy)
        ls = lines[:]
        rng.shuffle(ls)
        text = list("".join(ls))
        for i in rng.sample(range(len(text)), len(text) // 100):
            text[i] = rng.choice(alphabet)
        chunk = "".join(text)
        out.write(chunk)
        size += len(chunk.encode("utf-8"))
        copy += 1
print(f"generated {size / 1e6:.1f} MB ({copy} noisy copies of {src})")
EOF

sets=(--set "data.corpus=\"$work/big.txt\"" --set 'data.preprocess="raw"' --set data.max_tokens=0
      --set data.val_fraction=0.001 --set train.epochs=1 --set train.tensorboard=false --device cpu)

# Loading alone: --dry-run reads the text, builds the vocabulary, encodes and splits it.
/usr/bin/time -f "%e %M" -o "$work/dry.time" "$grulm" train "${sets[@]}" --out "$work/dry" --dry-run > "$work/dry.out"
read -r dry_s dry_kib < <(tail -n1 "$work/dry.time")
echo "load (--dry-run): ${dry_s} s, peak RSS $((dry_kib / 1024)) MiB"
# For scale: a process that only loads libtorch (grulm info).
/usr/bin/time -f "%e %M" -o "$work/info.time" "$grulm" info > /dev/null
read -r _ info_kib < <(tail -n1 "$work/info.time")
echo "libtorch alone (grulm info): peak RSS $((info_kib / 1024)) MiB"

# Training, stopped by SIGINT after $secs seconds: its partial checkpoint says
# how many steps it trained in how many seconds.
/usr/bin/time -f "%e %M" -o "$work/train.time" "$grulm" train "${sets[@]}" --out "$work/run" > "$work/train.out" 2> "$work/train.err" &
timer=$!
sleep 1
pid=$(pgrep -P "$timer" grulm)
sleep "$secs"
kill -INT "$pid"
wait "$timer" || true
# (time's last line: a process ended by a signal gets a "Command exited" line first)
read -r train_s train_kib < <(tail -n1 "$work/train.time")
grep -m1 '^training' "$work/train.out" || true
tail -n1 "$work/train.err"
python3 - "$work/run/checkpoint.safetensors" "$train_s" "$train_kib" <<'EOF'
import json, struct, sys
path, wall, kib = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    meta = json.loads(f.read(n))["__metadata__"]
steps, seconds = int(meta["grulm.partial_steps"]), float(meta["grulm.partial_seconds"])
tokens = steps * 32 * 35
print(f"trained {steps} steps of 32x35 in {seconds:.1f} s: {tokens / seconds:,.0f} tokens/s; "
      f"whole process {wall:.1f} s, peak RSS {kib // 1024} MiB")
EOF
