#!/usr/bin/env bash
# `make teachers`: train the teacher ensemble for one DCASE split, score every clip with each
# teacher, fuse the logits (the paper's eq. 4, h = sum_k alpha_k logits_k + beta, fitted on the
# split's labelled training clips) and join the fused logits into the shards' teacher_logits
# column (crash-safe rewrite, see pipeline/src/teachers/join.rs).
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
#   OOF=            K >= 2: out-of-fold teacher logits. Each teacher is K runs, run f trained
#                   without location fold f/K (train --holdout-fold f/K, run folder
#                   $RUNS/teacher-split$P-t$k-f$f); every training clip is scored by the run
#                   that did not train on it, test clips by the mean of the K runs
#                   (train predict --model RUN1 .. RUNK). Costs K trainings per teacher, each
#                   on (K-1)/K of the clips.
#   TRAIN_FLAGS=    extra flags for every teacher's training run.
#   CARGO=cargo
#
# Logits: each teacher scores the ORIGINAL rows of every set (`train predict --set all`). By
# default its logits for its own training clips are in-sample, as in the reference systems;
# with OOF=K they are out-of-fold (see above), so the fusion is fitted on logits as confident
# as the teachers are on audio they have not heard.
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
OOF=${OOF:-}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
CARGO=${CARGO:-cargo}

if [ ! -f "$OUT/manifest.json" ]; then
    echo "teachers.sh: $OUT/manifest.json not found; run 'make features OUT=$OUT' first" >&2
    exit 1
fi
read -r -a kinds <<<"$MODELS"
mkdir -p "$RUNS"
"$CARGO" build --release -p train -p pipeline

# train_teacher NAME MODEL SEED [FLAGS...]: one training run (an existing finished run is reused).
train_teacher() {
    local name=$1 model=$2 seed=$3
    shift 3
    if [ -f "$RUNS/$name/model.bpk" ]; then
        echo "== reusing $RUNS/$name"
        return
    fi
    echo "== $name: $model, split $SPLIT, seed $seed $* -> $RUNS/$name"
    # --no-kd: a teacher learns from the labels only, even when the shards already carry
    # teacher logits from an earlier run.
    # shellcheck disable=SC2086
    "$CARGO" run --release -q -p train -- --shards "$OUT" --model "$model" --split "$SPLIT" \
        --seed "$seed" --name "$name" --runs "$RUNS" --no-kd --quiet \
        ${EPOCHS:+--epochs "$EPOCHS"} $TRAIN_FLAGS "$@"
}

logits=()
for ((k = 1; k <= TEACHERS; k++)); do
    model=${kinds[$(((k - 1) % ${#kinds[@]}))]}
    seed=$((SEED + k - 1))
    name="teacher-split$SPLIT-t$k"
    echo "== teacher $k/$TEACHERS"
    if [ -n "$OOF" ]; then
        members=()
        for ((f = 1; f <= OOF; f++)); do
            train_teacher "$name-f$f" "$model" "$seed" --holdout-fold "$f/$OOF"
            members+=("$RUNS/$name-f$f")
        done
        out="$RUNS/$name-oof$OOF-logits.parquet"
    else
        train_teacher "$name" "$model" "$seed"
        members=("$RUNS/$name")
        out="$RUNS/$name/logits.parquet"
    fi
    "$CARGO" run --release -q -p train -- predict --shards "$OUT" --model "${members[@]}" \
        --out "$out" --set all
    logits+=("$out")
done

"$CARGO" run --release -q -p pipeline -- teachers fuse-logits --shards "$OUT" \
    --logits "${logits[@]}" --split "$SPLIT" \
    --out-report "$RUNS/teachers-split$SPLIT${OOF:+-oof$OOF}-fusion.json" \
    --out-logits "$RUNS/teachers-split$SPLIT${OOF:+-oof$OOF}-fused-logits.parquet" \
    --alpha-ridge "$ALPHA_RIDGE" ${AVERAGE:+--average}
