#!/usr/bin/env python3
"""Write a small TAU-layout dataset that points at a subset of another one's clips.

A small real-sized check of the trainer (issue "train right on any dataset size"): e.g.
~450 training clips of one device and the full test list (the seen device and the unseen
ones), like a user's own small set. The audio files are symbolic links into the source
folder; meta.csv, evaluation_setup/fold1_{train,test,evaluate}.csv and split_setup/
split100.csv + test.csv are written for the subset, so `pipeline features --dataset OUT`
reads it as any TAU22-style folder.

    python3 scripts/subset-dataset.py --src demo-data --out scratch/a450 \
        --device a --train-clips 450 --seed 1

Training clips are drawn per scene (as evenly as the scenes allow) from the source's
split100.csv (or fold1_train.csv), seeded; the test list is the source's test list,
optionally narrowed with --test-devices.
"""
import argparse
import csv
import os
import random
import sys
from collections import defaultdict
from pathlib import Path


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_tsv(path, fields, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t", lineterminator="\n",
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def first_existing(*paths):
    for p in paths:
        if p.is_file():
            return p
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True, help="TAU-style dataset folder")
    ap.add_argument("--out", type=Path, required=True, help="new dataset folder (must not exist)")
    ap.add_argument("--device", default="a", help="device of the training clips (default a)")
    ap.add_argument("--train-clips", type=int, default=450, help="training clips (default 450)")
    ap.add_argument("--test-devices", default="",
                    help="comma-separated devices to keep in the test list (default: all)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    src = a.src.resolve()
    meta_path = src / "meta.csv"
    if not meta_path.is_file():
        sys.exit(f"{meta_path}: not found; --src must be a TAU-style dataset folder")
    if a.out.exists():
        sys.exit(f"{a.out}: exists already; pick a new folder")
    meta = read_tsv(meta_path)
    by_file = {r["filename"]: r for r in meta}
    train_list = first_existing(src / "split_setup" / "split100.csv",
                                src / "evaluation_setup" / "fold1_train.csv")
    test_list = first_existing(src / "split_setup" / "test.csv",
                               src / "evaluation_setup" / "fold1_evaluate.csv")
    if train_list is None or test_list is None:
        sys.exit(f"{src}: no split100.csv / fold1_train.csv or test.csv / fold1_evaluate.csv")

    pool = defaultdict(list)
    for r in read_tsv(train_list):
        m = by_file.get(r["filename"])
        if m is not None and m["source_label"] == a.device:
            pool[m["scene_label"]].append(m)
    available = sum(len(v) for v in pool.values())
    if available < a.train_clips:
        sys.exit(f"{train_list}: only {available} training clips of device {a.device}")
    rng = random.Random(a.seed)
    scenes = sorted(pool)
    for s in scenes:
        pool[s].sort(key=lambda m: m["filename"])
        rng.shuffle(pool[s])
    train, k = [], 0
    while len(train) < a.train_clips:  # round robin over the scenes: balanced classes
        s = scenes[k % len(scenes)]
        if pool[s]:
            train.append(pool[s].pop())
        k += 1
    keep = set(d for d in a.test_devices.split(",") if d)
    test = [by_file[r["filename"]] for r in read_tsv(test_list)
            if r["filename"] in by_file
            and (not keep or by_file[r["filename"]]["source_label"] in keep)]

    out = a.out
    (out / "audio").mkdir(parents=True)
    for m in train + test:
        os.symlink(src / m["filename"], out / m["filename"])
    fields = ["filename", "scene_label", "identifier", "source_label"]
    write_tsv(out / "meta.csv", fields, sorted(train + test, key=lambda m: m["filename"]))
    labelled = ["filename", "scene_label"]
    write_tsv(out / "evaluation_setup" / "fold1_train.csv", labelled, train)
    write_tsv(out / "evaluation_setup" / "fold1_evaluate.csv", labelled, test)
    write_tsv(out / "evaluation_setup" / "fold1_test.csv", ["filename"], test)
    write_tsv(out / "split_setup" / "split100.csv", labelled, train)
    write_tsv(out / "split_setup" / "test.csv", labelled, test)
    devices = defaultdict(int)
    for m in test:
        devices[m["source_label"]] += 1
    print(f"{out}: {len(train)} training clips of device {a.device} "
          f"({len(train) // len(scenes)}-{-(-len(train) // len(scenes))} per scene), "
          f"{len(test)} test clips ({', '.join(f'{d} {n}' for d, n in sorted(devices.items()))})")


if __name__ == "__main__":
    main()
