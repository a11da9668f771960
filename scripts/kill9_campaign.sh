#!/usr/bin/env bash
# kill -9 campaign (issue 21): SIGKILL a checkpointing `cargo xtask train` run at random moments
# (a third aimed at checkpoint writes, a third at the pruning of old checkpoints), check every
# step-* directory after each kill, resume, and at the end compare the final weights with an
# uninterrupted run's, byte for byte.
#
#   scripts/kill9_campaign.sh [KILLS=100] [WORK_DIR=runs/kill9]
#
# Prints one line per kill and a summary: kills, unusable runs (a --resume that failed), damaged
# step-* directories, and whether the final weights are identical. Exit 1 if any check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
kills_wanted=${1:-100}
work=${2:-runs/kill9}
steps=2000
args=(train --model lenet5 --steps "$steps" --checkpoint-every 7 --log-every 25)

cargo build --release -q -p xtask
xtask=target/release/xtask
rm -rf "$work" && mkdir -p "$work"

echo "== the uninterrupted run ($steps steps)"
"$xtask" "${args[@]}" --out "$work/straight" >"$work/straight.log"
final="checkpoints/step-$(printf %08d "$steps")/model.safetensors"

run="$work/run"
kills=0 unusable=0 damaged=0 rounds=0
# Waits until the checkpoints directory of $run holds an entry whose name starts with $1, or
# $2 seconds pass.
wait_for_entry() {
  local prefix=$1 deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    if compgen -G "$run/checkpoints/$prefix*" >/dev/null; then return 0; fi
    sleep 0.002
  done
  return 1
}
while ((kills < kills_wanted)); do
  if [[ -f "$run/run.json" ]]; then
    cmd=("$xtask" train --resume "$run")
  else
    cmd=("$xtask" "${args[@]}" --out "$run")
  fi
  "${cmd[@]}" >>"$work/run.log" 2>&1 &
  pid=$!
  case $((kills % 3)) in
    0) aim="write"; wait_for_entry ".tmp-step-" 20 || true ;;
    1) aim="prune"; wait_for_entry ".tmp-removed-" 20 || true ;;
    *) aim="random"; sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.3f", 0.3 + 1.5 * r / 32768 }')" ;;
  esac
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
  else
    # The run ended before the kill: it must have succeeded, and equal the straight run.
    if ! wait "$pid"; then
      echo "run failed on its own; see $work/run.log"
      unusable=$((unusable + 1))
    fi
  fi
  # Every step-* directory must be complete (the run's own temporary entries may remain).
  if ! "$xtask" verify "$run" >"$work/verify.log" 2>&1; then
    n=$(grep -c DAMAGED "$work/verify.log" || true)
    damaged=$((damaged + n))
    echo "kill $kills ($aim): $n damaged step-* directories"; cat "$work/verify.log"
  fi
  latest=$(ls "$run/checkpoints" 2>/dev/null | grep '^step-' | tail -1 || true)
  echo "kill $kills ($aim): newest checkpoint ${latest:-none}"
  if [[ -f "$run/$final" ]]; then
    rounds=$((rounds + 1))
    if ! cmp -s "$run/$final" "$work/straight/$final"; then
      echo "round $rounds: final weights differ from the uninterrupted run"
      unusable=$((unusable + 1))
    fi
    rm -rf "$run"
  fi
done
echo "== resume to the end"
if [[ -f "$run/run.json" ]]; then
  "$xtask" train --resume "$run" >>"$work/run.log" 2>&1 || unusable=$((unusable + 1))
else
  "$xtask" "${args[@]}" --out "$run" >>"$work/run.log" 2>&1 || unusable=$((unusable + 1))
fi
"$xtask" verify "$run" >"$work/verify.log" 2>&1 || damaged=$((damaged + $(grep -c DAMAGED "$work/verify.log" || true)))
identical=no
cmp -s "$run/$final" "$work/straight/$final" && identical=yes && rounds=$((rounds + 1))
echo "kills: $kills, rounds completed: $rounds, unusable runs: $unusable, damaged step-* directories: $damaged, final weights identical to the uninterrupted run: $identical"
[[ $unusable == 0 && $damaged == 0 && $identical == yes ]]
