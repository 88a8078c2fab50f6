"""The hourly ``inventory_sync`` job in-process (a child process of ``benchmarks/run.py``).

    python benchmarks/hourly.py --landing L --data-dir D --as-of T

What the ``inventory_sync_hourly`` schedule runs (``pipelines/jobs.py``): the four
inventory feeds, their canonical tables, the feed status, the drift mart and the planning
inventory sync, through the same ``run_pipeline`` as ``distsync run`` with the job's
selection. Prints one JSON line: ``success``, ``error``, ``seconds`` (from interpreter
start, the imports included) and the selected assets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

T0 = time.perf_counter()
import common  # noqa: E402  (benchmarks/common.py, beside this script)

common.put_code_on_path()

from pipelines.jobs import inventory_sync  # noqa: E402
from pipelines.resources import DistsyncResource  # noqa: E402
from pipelines.runner import run_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--landing", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--as-of", required=True)
    args = p.parse_args(argv)
    resource = DistsyncResource(landing=args.landing, data_dir=args.data_dir, as_of=args.as_of)
    outcome = run_pipeline(resource, selection=inventory_sync.selection)
    print(json.dumps({"success": outcome.success, "error": outcome.error,
                      "seconds": round(time.perf_counter() - T0, 3), "job": inventory_sync.name,
                      "assets": str(inventory_sync.selection)}))
    return 0 if outcome.success else 1


if __name__ == "__main__":
    sys.exit(main())
