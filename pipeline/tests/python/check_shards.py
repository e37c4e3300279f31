#!/usr/bin/env python3
"""Opens a shard folder written by `pipeline features` with pyarrow and DuckDB (and polars when
it is installed) and checks the documented types, the key-value metadata, the row counts per
variant and the log-mel values (float32 or float16, as `asc.logmel_type` says).

Usage: check_shards.py DIR [original=N,dir=M,...]

Exit code 0 when every check passes; 1 with a message naming the problem otherwise.
Install the readers with: pip install -r pipeline/tests/python/requirements.txt (polars is
optional: pip install polars).
"""
import glob
import json
import os
import sys

try:
    import duckdb
    import pyarrow as pa
    import pyarrow.compute
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover
    sys.exit(f"missing module ({e}); pip install -r pipeline/tests/python/requirements.txt")

META_KEYS = [
    "asc.spec_version",
    "asc.logmel_type",
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
    first_rows = []
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
        if kv["asc.spec_version"] != "2":
            fail(f"{f}: spec version {kv['asc.spec_version']}, expected 2")
        mel_type = {"float32": pa.float32(), "float16": pa.float16()}.get(kv["asc.logmel_type"])
        if mel_type is None:
            fail(f"{f}: asc.logmel_type is {kv['asc.logmel_type']}")
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
            "logmel": pa.list_(pa.field("item", mel_type, nullable=False), logmel_len),
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
            # Log-mel values: finite natural logs of mel power plus 1e-5, so >= ln(1e-5).
            values = lm.flatten().cast(pa.float64())
            lo, hi = pa.compute.min(values).as_py(), pa.compute.max(values).as_py()
            if not (-11.6 < lo <= hi < 30.0):
                fail(f"{f}: log-mel values in [{lo}, {hi}]")
            first_rows.append((os.path.basename(f), table.column("clip_id")[0].as_py(),
                               table.column("variant")[0].as_py(),
                               lm[0].values.cast(pa.float64()).to_pylist()[:50]))

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
    # The first values of each shard's first row, as DuckDB reads them, equal pyarrow's.
    for name, clip_id, variant, want in first_rows:
        (got,) = con.execute(
            f"SELECT logmel[1:50] FROM '{os.path.join(folder, name)}' "
            "WHERE clip_id = ? AND variant = ? LIMIT 1",
            [clip_id, variant],
        ).fetchone()
        if [float(x) for x in got] != want:
            fail(f"{name}: duckdb reads {got[:3]}..., pyarrow {want[:3]}...")
    readers = "pyarrow, duckdb"
    try:
        import polars as pl
    except ImportError:
        pl = None
    if pl is not None:
        df = pl.scan_parquet(glob_pattern).select("clip_id", "variant", "logmel").collect()
        if df.height != total:
            fail(f"polars reads {df.height} rows, pyarrow {total}")
        for name, clip_id, variant, want in first_rows:
            row = df.filter((pl.col("clip_id") == clip_id) & (pl.col("variant") == variant))
            got = [float(x) for x in row["logmel"][0][:50]]
            if got != want:
                fail(f"{name}: polars reads {got[:3]}..., pyarrow {want[:3]}...")
        readers += f", polars {pl.__version__}"
    print(
        f"ok ({readers}): {len(files)} shards, {total} rows, per variant {counts}, "
        f"{n_logits} with teacher logits"
    )


if __name__ == "__main__":
    main()
