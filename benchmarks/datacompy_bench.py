"""datacompy 1.1 on the drift comparison (runs in ``benchmarks/.venv-datacompy``).

    benchmarks/.venv-datacompy/bin/python benchmarks/datacompy_bench.py --backend pandas|polars \
        --files files.json --out result.json

Loads the current ERP ``inventory_balance`` CSV and WMS ``stock_snapshot`` Parquet (and the
``uom_conversion`` / ``item_xref`` / ``location_xref`` CSVs) with the backend's own
reader, aggregates both to item-location in base units with exactly the rules of
``floors.py`` (see its docstring), then compares them with ``PandasCompare`` /
``PolarsCompare`` on ``(item_id, location_id)`` with the same tolerance (``abs_tol`` /
``rel_tol`` of the settings, default 0 and 0 = exact).

Timed apart: ``load_s`` (read + aggregate both sides) and ``compare_s`` (the Compare
object, which joins and compares in its constructor, plus ``all_mismatch()`` and the two
unique-row sets: the flagged rows, as the drift step produces them). ``report_s`` times
``report()`` on its own, for information.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def load_pandas(files: dict):
    import pandas as pd

    def csv(path):
        return pd.read_csv(path, sep="|", dtype=str, keep_default_na=False, na_values=[""])

    uom = csv(files["uom_conversion"][-1])
    uom = pd.DataFrame({"item_id": uom["MATNR"].str.lstrip("0"), "MEINS": uom["MEINH"],
                        "factor": pd.to_numeric(uom["UMREZ"], errors="coerce")
                        / pd.to_numeric(uom["UMREN"], errors="coerce")})
    ix = csv(files["item_xref"][-1])
    ix = ix[ix["SYSTEM"] == "WMS"]
    ix = pd.DataFrame({"sku": ix["EXTERNAL_CODE"], "item_id": ix["MATNR"].str.lstrip("0")})
    lx = csv(files["location_xref"][-1])
    lx = lx[lx["SYSTEM"] == "WMS"]
    lx = pd.DataFrame({"warehouse_code": lx["EXTERNAL_CODE"], "location_id": lx["WERKS"]})

    b = csv(files["inventory_balance"][-1])
    b["item_id"] = b["MATNR"].str.lstrip("0")
    b["q"] = sum(pd.to_numeric(b[c], errors="coerce") for c in ("LABST", "INSME", "SPEME"))
    b = b.merge(uom, on=["item_id", "MEINS"], how="left")
    b["factor"] = b["factor"].where(b["MEINS"] != "EA", 1.0)
    b = b[b["factor"].notna()]
    b["qty"] = b["q"] * b["factor"]
    erp = b.groupby(["item_id", "WERKS"], as_index=False)["qty"].sum(min_count=1).rename(
        columns={"WERKS": "location_id"})

    s = pd.read_parquet(files["stock_snapshot"][-1], columns=["warehouse_code", "sku", "qty_each"])
    s = s.merge(ix, on="sku").merge(lx, on="warehouse_code")
    wms = s.groupby(["item_id", "location_id"], as_index=False)["qty_each"].sum().rename(columns={"qty_each": "qty"})
    wms["qty"] = wms["qty"].astype("float64")
    return erp, wms


def load_polars(files: dict):
    import polars as pl

    def csv(path):
        return pl.read_csv(path, separator="|", infer_schema=False, quote_char='"')

    uom = csv(files["uom_conversion"][-1]).select(
        pl.col("MATNR").str.strip_chars_start("0").alias("item_id"), pl.col("MEINH").alias("MEINS"),
        (pl.col("UMREZ").cast(pl.Float64, strict=False) / pl.col("UMREN").cast(pl.Float64, strict=False))
        .alias("factor"))
    ix = csv(files["item_xref"][-1]).filter(pl.col("SYSTEM") == "WMS").select(
        pl.col("EXTERNAL_CODE").alias("sku"), pl.col("MATNR").str.strip_chars_start("0").alias("item_id"))
    lx = csv(files["location_xref"][-1]).filter(pl.col("SYSTEM") == "WMS").select(
        pl.col("EXTERNAL_CODE").alias("warehouse_code"), pl.col("WERKS").alias("location_id"))
    q = sum(pl.col(c).cast(pl.Float64, strict=False) for c in ("LABST", "INSME", "SPEME"))
    erp = (csv(files["inventory_balance"][-1])
           .with_columns(pl.col("MATNR").str.strip_chars_start("0").alias("item_id"), q.alias("q"))
           .join(uom, on=["item_id", "MEINS"], how="left")
           .with_columns(pl.when(pl.col("MEINS") == "EA").then(1.0).otherwise(pl.col("factor")).alias("factor"))
           .filter(pl.col("factor").is_not_null())
           .group_by("item_id", pl.col("WERKS").alias("location_id"))
           .agg((pl.col("q") * pl.col("factor")).sum().alias("qty")))
    wms = (pl.read_parquet(files["stock_snapshot"][-1], columns=["warehouse_code", "sku", "qty_each"])
           .join(ix, on="sku").join(lx, on="warehouse_code")
           .group_by("item_id", "location_id").agg(pl.col("qty_each").sum().cast(pl.Float64).alias("qty")))
    return erp, wms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=("pandas", "polars"), required=True)
    p.add_argument("--files", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--report", action="store_true", help="also time compare.report()")
    args = p.parse_args(argv)
    spec = json.loads(Path(args.files).read_text())
    files, settings = spec["files"], spec["settings"]
    t0 = time.perf_counter()
    import datacompy

    import_s = time.perf_counter() - t0
    t = time.perf_counter()
    erp, wms = (load_pandas if args.backend == "pandas" else load_polars)(files)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    cls = datacompy.PandasCompare if args.backend == "pandas" else datacompy.PolarsCompare
    cmp = cls(erp, wms, join_columns=["item_id", "location_id"], abs_tol=float(settings["abs_tol"]),
              rel_tol=float(settings["rel_tol"]), df1_name="erp", df2_name="wms")
    mismatch = cmp.all_mismatch()
    only_erp, only_wms = len(cmp.df1_unq_rows), len(cmp.df2_unq_rows)
    compare_s = time.perf_counter() - t
    report_s = None
    if args.report:
        t = time.perf_counter()
        cmp.report()
        report_s = round(time.perf_counter() - t, 3)
    both = len(cmp.intersect_rows)
    result = {
        "backend": args.backend, "datacompy": datacompy.__version__,
        "import_s": round(import_s, 3), "load_s": round(load_s, 3), "compare_s": round(compare_s, 3),
        "report_s": report_s,
        "counts": {"match": both - len(mismatch), "mismatch": len(mismatch), "only_erp": only_erp,
                   "only_wms": only_wms},
        "rows": {"erp": len(erp), "wms": len(wms)},
    }
    Path(args.out).write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
