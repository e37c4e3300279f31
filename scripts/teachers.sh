#!/usr/bin/env bash
# `make teachers`: train the teacher ensemble for one DCASE split, score every clip with each
# teacher, fuse the logits (the paper's eq. 4, h = sum_k alpha_k logits_k + beta, fitted on the
# split's labelled training clips) and join the fused logits into the shards' teacher_logits
# column (crash-safe rewrite, see pipeline/src/materialize.rs).
#
# Knobs (environment or make variables):
#   OUT=data        shard folder, rewritten in place. The shards hold ONE teacher_logits column,
#                   so for several splits copy the folder per split first:
#                   cp -r data data-split5 && make teachers SPLIT=5 OUT=data-split5
#   SPLIT=100       DCASE2024 training split (5, 10, 25, 50, 100): teachers only see its
#                   training clips (train --split), the fusion is fitted on the same clips.
#   TEACHERS=3      number of teachers.
#   MODELS=teacher  teacher kinds (train --model presets or TOML files), cycled over the
#                   teachers; e.g. MODELS="teacher s3".
#   SEED=1          seed of the first teacher; teacher k gets SEED + k - 1.
#   EPOCHS=         epochs per teacher (empty: the trainer's default).
#   RUNS=runs       folder of the run folders; teacher k of split P is
#                   $RUNS/teacher-split$P-t$k (an existing finished run is reused, not retrained).
#   AVERAGE=        non-empty: plain averaging instead of the fitted fusion.
#   ALPHA_RIDGE=0   ridge shrinking the fitted teacher weights toward averaging (fuse-logits
#                   --alpha-ridge); in-sample teacher logits can otherwise drive alpha large.
#   TRAIN_FLAGS=    extra flags for every teacher's training run.
#   CARGO=cargo
#
# Logits: each teacher scores the ORIGINAL rows of every set (`train predict --set all`); its
# logits for its own training clips are in-sample, as in the reference systems. Out-of-fold
# logits (each clip scored by a teacher that did not train on it) are not implemented yet.
set -euo pipefail

OUT=${OUT:-data}
SPLIT=${SPLIT:-100}
TEACHERS=${TEACHERS:-3}
MODELS=${MODELS:-teacher}
SEED=${SEED:-1}
EPOCHS=${EPOCHS:-}
RUNS=${RUNS:-runs}
AVERAGE=${AVERAGE:-}
ALPHA_RIDGE=${ALPHA_RIDGE:-0}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
CARGO=${CARGO:-cargo}

if [ ! -f "$OUT/manifest.json" ]; then
    echo "teachers.sh: $OUT/manifest.json not found; run 'make features OUT=$OUT' first" >&2
    exit 1
fi
read -r -a kinds <<<"$MODELS"
mkdir -p "$RUNS"
"$CARGO" build --release -p train -p pipeline

logits=()
for ((k = 1; k <= TEACHERS; k++)); do
    model=${kinds[$(((k - 1) % ${#kinds[@]}))]}
    name="teacher-split$SPLIT-t$k"
    run="$RUNS/$name"
    if [ -f "$run/model.bpk" ]; then
        echo "== teacher $k/$TEACHERS: reusing $run"
    else
        echo "== teacher $k/$TEACHERS: $model, split $SPLIT, seed $((SEED + k - 1)) -> $run"
        # --no-kd: a teacher learns from the labels only, even when the shards already carry
        # teacher logits from an earlier run.
        # shellcheck disable=SC2086
        "$CARGO" run --release -q -p train -- --shards "$OUT" --model "$model" --split "$SPLIT" \
            --seed $((SEED + k - 1)) --name "$name" --runs "$RUNS" --no-kd --quiet \
            ${EPOCHS:+--epochs "$EPOCHS"} $TRAIN_FLAGS
    fi
    "$CARGO" run --release -q -p train -- predict --shards "$OUT" --model "$run" \
        --out "$run/logits.parquet" --set all
    logits+=("$run/logits.parquet")
done

"$CARGO" run --release -q -p pipeline -- teachers fuse-logits --shards "$OUT" \
    --logits "${logits[@]}" --split "$SPLIT" \
    --out-report "$RUNS/teachers-split$SPLIT-fusion.json" \
    --out-logits "$RUNS/teachers-split$SPLIT-fused-logits.parquet" \
    --alpha-ridge "$ALPHA_RIDGE" ${AVERAGE:+--average}
