"""Reads a merged combined.parquet with PyArrow, pandas, polars, DuckDB and Hugging Face
`datasets` (when installed) and checks that each gets exactly the values of combined.csv read as
the declared column types, and the expected type of every column.

    python parquet_interop.py combined.parquet combined.csv '{"col": "int64", ...}'
    python parquet_interop.py --partitioned TREE combined.csv COLUMN '{"col": "int64", ...}'

The second form checks a `merge --partition-by COLUMN` tree (TREE/COLUMN=value/part-00000.parquet)
against the unpartitioned CSV: PyArrow (`pyarrow.dataset`) and DuckDB read it with and without
Hive partitioning. Without, the files give every row of the CSV once, with its exact values; with
it, the value read from each directory name is the row's value, except where the README says the
name cannot carry it (the empty value is null; a long value is cut and ends with `~` and a hash).

Prints one line per reader checked; exits non-zero with the first difference.
"""

import csv
import datetime as dt
import json
import math
import os
import sys
import tempfile

UTC = dt.timezone.utc


def from_csv(text, ty):
    """A CSV field as the Python value its declared type gives (None: null)."""
    if ty == "string":
        return text
    if text == "":
        return None
    if ty == "int64":
        return int(text)
    if ty == "float64":
        return float(text)
    if ty == "bool":
        return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
    if ty == "date":
        return dt.date.fromisoformat(text)
    if ty == "timestamp":
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return t.astimezone(UTC)
    raise ValueError(ty)


def same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        # Both must be aware and name the same instant.
        return a.tzinfo is not None and b.tzinfo is not None and a == b
    return type(a) is type(b) and a == b


def compare(reader, got_rows, want_rows, columns):
    if len(got_rows) != len(want_rows):
        sys.exit(f"{reader}: {len(got_rows)} rows, expected {len(want_rows)}")
    for r, (got, want) in enumerate(zip(got_rows, want_rows)):
        for c, g, w in zip(columns, got, want):
            if not same(g, w):
                sys.exit(f"{reader}: row {r + 1}, column {c!r}: got {g!r}, expected {w!r}")
    print(f"{reader}: {len(got_rows)} rows, values and types match the CSV")


def check_types(reader, got, want, columns):
    for c in columns:
        if str(got[c]) != want[c]:
            sys.exit(f"{reader}: column {c!r} has type {got[c]}, expected {want[c]}")


def none_if_na(v):
    import pandas as pd

    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    return v


def main():
    parquet, csv_path, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    columns = rows[0]
    types = [spec.get(c, "string") for c in columns]
    want = [[from_csv(v, t) for v, t in zip(row, types)] for row in rows[1:]]

    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    arrow_names = {
        "string": "string",
        "int64": "int64",
        "float64": "double",
        "bool": "bool",
        "date": "date32[day]",
        "timestamp": "timestamp[us, tz=UTC]",
    }
    check_types("pyarrow", {f.name: f.type for f in table.schema}, dict(zip(columns, [arrow_names[t] for t in types])), columns)
    for f, t in zip(table.schema, types):
        if f.nullable != (t != "string"):
            sys.exit(f"pyarrow: column {f.name!r} nullable={f.nullable}, expected {t != 'string'}")
    compare("pyarrow", [list(r.values()) for r in table.to_pylist()], want, columns)

    import pandas as pd

    df = pd.read_parquet(parquet, dtype_backend="pyarrow")
    check_types("pandas", {c: df[c].dtype for c in columns}, dict(zip(columns, [f"{arrow_names[t]}[pyarrow]" for t in types])), columns)
    got = [[none_if_na(v) for v in row] for row in df.itertuples(index=False, name=None)]
    compare("pandas", got, want, columns)

    import polars as pl

    pdf = pl.read_parquet(parquet)
    polars_names = {
        "string": "String",
        "int64": "Int64",
        "float64": "Float64",
        "bool": "Boolean",
        "date": "Date",
        "timestamp": "Datetime(time_unit='us', time_zone='UTC')",
    }
    check_types("polars", dict(pdf.schema), dict(zip(columns, [polars_names[t] for t in types])), columns)
    compare("polars", pdf.rows(), want, columns)

    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rel = con.sql(f"SELECT * FROM read_parquet('{parquet}')")
    duck_names = {
        "string": "VARCHAR",
        "int64": "BIGINT",
        "float64": "DOUBLE",
        "bool": "BOOLEAN",
        "date": "DATE",
        "timestamp": "TIMESTAMP WITH TIME ZONE",
    }
    check_types("duckdb", dict(zip(rel.columns, rel.types)), dict(zip(columns, [duck_names[t] for t in types])), columns)
    compare("duckdb", rel.fetchall(), want, columns)

    try:
        import datasets
    except ImportError:
        print("datasets: not installed, skipped")
        return
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as cache:
        ds = datasets.Dataset.from_parquet(parquet, cache_dir=cache)
        hf_names = {
            "string": "string",
            "int64": "int64",
            "float64": "float64",
            "bool": "bool",
            "date": "date32",
            "timestamp": "timestamp[us, tz=UTC]",
        }
        check_types("datasets", {c: ds.features[c].dtype for c in columns}, dict(zip(columns, [hf_names[t] for t in types])), columns)
        # The Arrow table under the dataset: the rows exactly as stored.
        got = [list(r.values()) for r in ds.data.table.to_pylist()]
        compare("datasets", got, want, columns)


def path_value_fits(path_value, file_value):
    """Whether the value a Hive reader takes from the directory name is the one the README
    promises for a row whose file holds `file_value`."""
    if file_value in ("", None, "__HIVE_DEFAULT_PARTITION__"):
        # Hive's null placeholder; PyArrow also reads a literal value spelling it as null.
        return path_value is None or path_value == file_value
    if isinstance(path_value, str) and "~" in path_value and path_value != file_value:
        head, digest = path_value.rsplit("~", 1)
        return len(digest) == 32 and str(file_value).startswith(head)
    return path_value == file_value


def main_partitioned():
    tree, csv_path, column, spec = sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    columns = rows[0]
    types = [spec.get(c, "string") for c in columns]
    want = sorted(
        ([from_csv(v, t) for v, t in zip(row, types)] for row in rows[1:]), key=repr
    )
    at = columns.index(column)

    import pyarrow as pa
    import pyarrow.dataset as ds

    # Only the Parquet files (the format both puts the CSV files beside them).
    plain = ds.dataset(tree, format="parquet", exclude_invalid_files=True).to_table()
    got = [list(r.values()) for r in plain.to_pylist()]
    compare("pyarrow files", sorted(got, key=repr), want, columns)
    arrow = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    part_type = arrow.get(types[at], pa.string())
    hive = ds.dataset(
        tree,
        format="parquet",
        exclude_invalid_files=True,
        partitioning=ds.partitioning(pa.schema([(column, part_type)]), flavor="hive"),
    ).to_table()
    # Fragments come in the same (path) order with and without partitioning.
    for r, (a, b) in enumerate(zip(plain.column(column).to_pylist(), hive.column(column).to_pylist())):
        if not path_value_fits(b, a):
            sys.exit(f"pyarrow hive: row {r + 1}: directory gives {b!r}, file holds {a!r}")
    print(f"pyarrow hive: {hive.num_rows} rows, directory values match the files")

    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    glob = os.path.join(tree, "*", "*.parquet")
    got = con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning=false)").fetchall()
    compare("duckdb files", sorted((list(r) for r in got), key=repr), want, columns)
    pairs = con.sql(
        f"SELECT f.{column}, h.{column} FROM "
        f"(SELECT {column}, filename, file_row_number FROM read_parquet('{glob}', "
        f"hive_partitioning=false, filename=true, file_row_number=true)) f JOIN "
        f"(SELECT {column}, filename, file_row_number FROM read_parquet('{glob}', "
        f"hive_partitioning=true, filename=true, file_row_number=true)) h "
        f"USING (filename, file_row_number)"
    ).fetchall()
    if len(pairs) != len(want):
        sys.exit(f"duckdb hive: {len(pairs)} rows, expected {len(want)}")
    for a, b in pairs:
        if not path_value_fits(b, a):
            sys.exit(f"duckdb hive: directory gives {b!r}, file holds {a!r}")
    print(f"duckdb hive: {len(pairs)} rows, directory values match the files")


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if sys.argv[1] == "--partitioned":
        main_partitioned()
    else:
        main()
