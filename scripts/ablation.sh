#!/usr/bin/env bash
# The recipe's ablation for one shard set, with the trainer's default schedule: the student
# (MODEL=s1) with KD from the fused teacher ensemble, without KD, without DIR (--p-dir 0) and
# without Freq-MixStyle (--no-fms), each with every seed of SEEDS; then one table of test macro
# accuracy (seen / unseen devices) per run and the mean per cell, and the floor.
#
#   SHARDS=data NAME=demo bash scripts/ablation.sh
#   SHARDS=scratch/a450-data NAME=a450 SEEDS="1 2" bash scripts/ablation.sh
#
# Knobs: SHARDS (shard folder), NAME (tag of the run folders), SEEDS ("1 2"), MODEL (s1),
# RUNS (runs), TEACHERS (3), TEACHER_FLAGS (extra flags of the teachers' training runs, e.g.
# "--updates 500" on a slow machine), TRAIN_FLAGS (extra flags of every student run), CARGO.
# The teachers are trained once per shard set (scripts/teachers.sh) into a copy
# "$SHARDS-kd" that carries the fused teacher logits; existing finished runs are reused, so an
# interrupted ablation continues where it stopped.
set -euo pipefail

SHARDS=${SHARDS:?set SHARDS to a shard folder}
NAME=${NAME:-$(basename "$SHARDS")}
SEEDS=${SEEDS:-1 2}
MODEL=${MODEL:-s1}
RUNS=${RUNS:-runs}
TEACHERS=${TEACHERS:-3}
TEACHER_FLAGS=${TEACHER_FLAGS:-}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
CARGO=${CARGO:-cargo}
KD_SHARDS="${SHARDS%/}-kd"

"$CARGO" build --release -q -p train -p pipeline
if [ ! -f "$KD_SHARDS/.teachers-done" ]; then
    rm -rf "$KD_SHARDS"
    cp -r "$SHARDS" "$KD_SHARDS"
    OUT="$KD_SHARDS" RUNS="$RUNS/$NAME-teachers" TEACHERS="$TEACHERS" \
        TRAIN_FLAGS="$TEACHER_FLAGS" CARGO="$CARGO" bash scripts/teachers.sh
    touch "$KD_SHARDS/.teachers-done"
fi

# cell name -> student flags (all on the shards with teacher logits; --no-kd ignores them).
declare -A FLAGS=(
    [kd]=""
    [no-kd]="--no-kd"
    [no-dir]="--p-dir 0"
    [no-fms]="--no-fms"
)
CELLS="kd no-kd no-dir no-fms"

for cell in $CELLS; do
    for seed in $SEEDS; do
        run="$NAME-$MODEL-$cell-s$seed"
        if [ -f "$RUNS/$run/report.md" ]; then
            echo "== reusing $RUNS/$run"
            continue
        fi
        echo "== $run"
        # shellcheck disable=SC2086
        "$CARGO" run --release -q -p train -- --shards "$KD_SHARDS" --model "$MODEL" \
            --seed "$seed" --name "$run" --runs "$RUNS" --quiet ${FLAGS[$cell]} $TRAIN_FLAGS \
            > "$RUNS/$run.out"
    done
done

# The table: macro accuracy and the seen / unseen rows of each report.md.
echo
echo "| cell | seed | macro % | seen % | unseen % | floor macro % |"
echo "|---|---|---:|---:|---:|---:|"
for cell in $CELLS; do
    for seed in $SEEDS; do
        md="$RUNS/$NAME-$MODEL-$cell-s$seed/report.md"
        [ -f "$md" ] || continue
        row() { grep -m1 "^| $1 |" "$md" | awk -F'|' '{gsub(/ /, "", $3); gsub(/ /, "", $4); print $3, $4}'; }
        read -r macro floor <<<"$(row "macro accuracy")"
        read -r seen _ <<<"$(row "seen devices")"
        read -r unseen _ <<<"$(row "unseen devices")"
        echo "| $cell | $seed | $macro | ${seen:--} | ${unseen:--} | $floor |"
    done
done
