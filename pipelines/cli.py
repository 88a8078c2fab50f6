"""``distsync`` command line (see ``shared/spec/outputs.md``).

    distsync run  [--landing PATH|s3://…] [--data-dir PATH] [--as-of ISO-8601] [--full-sync]
                  [--settings FILE]
    distsync demo [--data-dir PATH] [--scale small|medium|large] [--as-of ISO-8601]

``run`` materializes the whole asset graph in-process for one ``as_of`` and prints a
short summary. Exit status 0 when the pipeline ran, whatever it found; 1 when a step
failed; 2 when it could not start (bad arguments, missing landing folder, bad
settings) — always with a one-line reason on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A reason the run cannot start (one line)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distsync", description="Reconcile ERP, planning and WMS extracts.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="ingest, reconcile and deliver for one as_of")
    run.add_argument("--landing", default=os.environ.get("DISTSYNC_LANDING"),
                     help="landing folder or s3:// URL (default DISTSYNC_LANDING or <data-dir>/landing)")
    run.add_argument("--data-dir", default=os.environ.get("DISTSYNC_DATA_DIR", "data"),
                     help="where the warehouse, lake, outbox and reports go (default DISTSYNC_DATA_DIR or data)")
    run.add_argument("--as-of", default=os.environ.get("DISTSYNC_AS_OF"),
                     help="run clock, ISO-8601 (default DISTSYNC_AS_OF or now)")
    run.add_argument("--full-sync", action="store_true", help="emit every sync record, not only changes")
    run.add_argument("--settings", default=os.environ.get("DISTSYNC_SETTINGS"),
                     help="TOML settings file (default DISTSYNC_SETTINGS or <data-dir>/distsync.toml)")
    run.add_argument("--verbose", action="store_true", help="show Dagster's step log lines")
    demo = sub.add_parser("demo", help="generate a demo landing folder with known problems and run it")
    demo.add_argument("--data-dir", default=os.environ.get("DISTSYNC_DATA_DIR", "data"))
    demo.add_argument("--scale", choices=("small", "medium", "large"), default="small")
    demo.add_argument("--as-of", default=os.environ.get("DISTSYNC_AS_OF"),
                      help="clock of the generated deliveries and of the run (default: now, to the hour)")
    demo.add_argument("--no-run", action="store_true", help="only generate the landing folder")
    demo.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_command(args)
        return demo_command(args)
    except CliError as exc:
        print(f"distsync: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("distsync: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the operator gets one line, developers the trace
        if os.environ.get("DISTSYNC_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"distsync: internal error: {type(exc).__name__}: {first} (set DISTSYNC_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED


def entry() -> None:
    """The ``distsync`` console script (and ``python -m pipelines.cli``): :func:`main`, then
    exit with its status.

    Before exiting it freezes every object still alive (``gc.freeze()``), so that CPython's
    finalization, which collects garbage over everything more than once, does not walk the
    hundreds of thousands of Dagster, pydantic and polars objects again: about 0.5 s of every
    ``distsync run`` at scale large, measured (README.md, "Performance"). Exit handlers still
    run (logging's flush among them) and stdout and stderr are still flushed. Nothing is left
    for a collection to finish: every file the run writes is closed and moved into place, and
    the warehouse and outbox connections are closed, before :func:`main` returns; the frozen
    objects' memory goes back with the process. Only this process entry freezes, never
    :func:`main`, which tests and the benchmark call in a process that goes on.
    """
    status = main()
    gc.freeze()
    sys.exit(status)


def _as_of(text: str | None) -> datetime:
    from pipelines.resources import RunClockError, parse_as_of

    if not text:
        return datetime.now(timezone.utc).replace(microsecond=0)
    try:
        return parse_as_of(text)
    except RunClockError as exc:
        raise CliError(str(exc)) from None


def _check_landing(landing: str) -> None:
    from contracts.landing import LandingError, filesystem

    try:
        fs, root = filesystem(landing)
        if not fs.exists(root):
            raise CliError(f"landing folder not found: {landing}")
    except LandingError as exc:
        raise CliError(str(exc)) from None
    except CliError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage errors become one line
        raise CliError(f"cannot reach landing {landing}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def run_command(args: argparse.Namespace) -> int:
    from contracts.settings import SettingsError
    from pipelines.resources import DistsyncResource
    from pipelines.runner import run_pipeline, summary_text

    data_dir = Path(args.data_dir)
    landing = args.landing or str(data_dir / "landing")
    as_of = _as_of(args.as_of)
    resource = DistsyncResource(landing=landing, data_dir=str(data_dir), as_of=as_of.isoformat(),
                                settings_file=args.settings, full_sync=bool(args.full_sync))
    try:
        resource.load_settings()
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    _check_landing(landing)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    started = time.perf_counter()
    outcome = run_pipeline(resource, verbose=args.verbose)
    print(summary_text(resource, as_of, outcome, time.perf_counter() - started))
    if not outcome.success:
        print(f"distsync: {outcome.error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def demo_command(args: argparse.Namespace) -> int:
    from pipelines.demo import generate_landing

    data_dir = Path(args.data_dir)
    landing = data_dir / "landing"
    marker = landing / ".distsync-demo.json"
    started = time.perf_counter()
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("scale") != args.scale:
            raise CliError(f"{landing} holds a {info.get('scale')} demo; remove it or choose another --data-dir")
        as_of_text = args.as_of or info["as_of"]
        print(f"demo: re-using the {args.scale} landing folder in {landing} (as_of {info['as_of']})")
    else:
        if landing.exists() and any(landing.iterdir()):
            raise CliError(f"{landing} already has files that are not a distsync demo; choose another --data-dir")
        summary = generate_landing(landing, scale=args.scale, as_of=_as_of(args.as_of) if args.as_of else None)
        as_of = summary["as_of"]
        as_of_text = as_of.isoformat() if isinstance(as_of, datetime) else str(as_of)
        marker.write_text(json.dumps({"scale": args.scale, "as_of": as_of_text}))
        print(f"demo: wrote a {args.scale} landing folder to {landing} in {time.perf_counter() - started:.1f} s "
              f"(as_of {as_of_text})")
    if args.no_run:
        return EXIT_OK
    run_args = argparse.Namespace(landing=str(landing), data_dir=str(data_dir), as_of=as_of_text, full_sync=False,
                                  settings=None, verbose=args.verbose)
    return run_command(run_args)


if __name__ == "__main__":  # pragma: no cover
    entry()
