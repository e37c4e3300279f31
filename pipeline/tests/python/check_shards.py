#!/usr/bin/env python3
"""Opens a shard folder written by `pipeline features` with pyarrow and DuckDB and checks the
documented types, the key-value metadata and the row counts per variant.

Usage: check_shards.py DIR [original=N,dir=M,...]

Exit code 0 when every check passes; 1 with a message naming the problem otherwise.
Install the readers with: pip install -r pipeline/tests/python/requirements.txt
"""
import glob
import json
import os
import sys

try:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover
    sys.exit(f"missing module ({e}); pip install -r pipeline/tests/python/requirements.txt")

META_KEYS = [
    "asc.spec_version",
    "asc.frontend",
    "asc.labels",
    "asc.devices",
    "asc.energy_threshold",
    "asc.dir_set",
    "asc.teacher",
    "asc.dataset",
]

DICT = pa.dictionary(pa.int32(), pa.string())


def fail(msg):
    print(f"check_shards: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    folder = sys.argv[1]
    expected = {}
    if len(sys.argv) > 2 and sys.argv[2]:
        for item in sys.argv[2].split(","):
            k, v = item.split("=")
            expected[k] = int(v)
    files = sorted(glob.glob(os.path.join(folder, "shard-*.parquet")))
    if not files:
        fail(f"{folder}: no shard-*.parquet files")
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    listed = sorted(s["file"] for s in manifest["shards"])
    if listed != [os.path.basename(f) for f in files]:
        fail(f"manifest lists {listed}, folder holds {files}")

    total = 0
    for f in files:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        kv = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        file_kv = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items()}
        for key in META_KEYS:
            if key not in kv:
                fail(f"{f}: schema metadata key {key} missing")
            if key not in file_kv:
                fail(f"{f}: file key-value metadata key {key} missing")
            if kv[key] != file_kv[key]:
                fail(f"{f}: {key} differs between schema and file metadata")
        frontend = json.loads(kv["asc.frontend"])
        labels = json.loads(kv["asc.labels"])
        n_frames = 1 + frontend["clip_samples"] // frontend["hop_length"]
        logmel_len = frontend["n_mels"] * n_frames
        if logmel_len != 16640:
            fail(f"{f}: log-mel length {logmel_len}, expected 256 x 65 = 16640")
        want = {
            "clip_id": pa.string(),
            "source_file": pa.string(),
            "scene_label": DICT,
            "label": pa.int32(),
            "device": DICT,
            "device_id": pa.int32(),
            "city": DICT,
            "identifier": DICT,
            "segment_id": pa.string(),
            "segment_index": pa.int32(),
            "set": DICT,
            "split": pa.uint8(),
            "variant": DICT,
            "variant_source": pa.string(),
            "energy": pa.float32(),
            "teacher_logits": pa.list_(pa.field("item", pa.float32(), nullable=False), len(labels)),
            "logmel": pa.list_(pa.field("item", pa.float32(), nullable=False), logmel_len),
        }
        if schema.names != list(want):
            fail(f"{f}: columns {schema.names}, expected {list(want)}")
        for name, t in want.items():
            if schema.field(name).type != t:
                fail(f"{f}: column {name} has type {schema.field(name).type}, expected {t}")
        table = pf.read()
        total += table.num_rows
        if table.num_rows:
            lm = table.column("logmel").combine_chunks()
            if not pa.types.is_fixed_size_list(lm.type) or lm.type.list_size != 16640:
                fail(f"{f}: logmel read back as {lm.type}")

    glob_pattern = os.path.join(folder, "*.parquet")
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT variant, count(*) FROM '{glob_pattern}' GROUP BY ALL ORDER BY 1"
    ).fetchall()
    counts = {str(v): int(n) for v, n in rows}
    if sum(counts.values()) != total or total != sum(s["rows"] for s in manifest["shards"]):
        fail(f"row counts disagree: duckdb {counts}, pyarrow {total}, manifest {manifest}")
    if expected and counts != expected:
        fail(f"rows per variant {counts}, expected {expected}")
    (n_logits,) = con.execute(
        f"SELECT count(*) FROM '{glob_pattern}' WHERE teacher_logits IS NOT NULL"
    ).fetchone()
    (lm_len,) = con.execute(f"SELECT max(len(logmel)) FROM '{glob_pattern}'").fetchone()
    if lm_len != 16640:
        fail(f"duckdb sees log-mel length {lm_len}")
    print(f"ok: {len(files)} shards, {total} rows, per variant {counts}, {n_logits} with teacher logits")


if __name__ == "__main__":
    main()
