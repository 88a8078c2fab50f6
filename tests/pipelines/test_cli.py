"""The command line as an operator uses it."""

import subprocess
import sys

import duckdb

from tests.conftest import MINI_AS_OF, ROOT


def distsync(*args, env=None, cwd=None):
    exe = ROOT / ".venv" / "bin" / "distsync"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipelines.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=600)


def test_run_over_mini_prints_a_summary_and_exits_0(tmp_path, mini_landing):
    out = distsync("run", "--landing", str(mini_landing), "--data-dir", str(tmp_path), "--as-of", "2026-11-24T09:00:00Z")
    assert out.returncode == 0, out.stderr
    assert "23 accepted, 3 rejected" in out.stdout
    assert "stale feeds: planning/forecast" in out.stdout
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM ingest.manifest").fetchone()[0] == 26
    con.close()


def test_environment_variables_do_what_the_flags_do(tmp_path, mini_landing):
    import os

    env = {**os.environ, "DISTSYNC_LANDING": str(mini_landing), "DISTSYNC_DATA_DIR": str(tmp_path / "d"),
           "DISTSYNC_AS_OF": MINI_AS_OF.isoformat()}
    out = distsync("run", env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "warehouse.duckdb").exists()


def test_errors_are_one_line_with_a_non_zero_status(tmp_path):
    bad_clock = distsync("run", "--landing", str(tmp_path), "--data-dir", str(tmp_path), "--as-of", "yesterday")
    assert bad_clock.returncode == 2
    assert bad_clock.stderr.strip() == "distsync: --as-of must be an ISO-8601 timestamp, got 'yesterday'"
    missing = distsync("run", "--landing", str(tmp_path / "nope"), "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "landing folder not found" in missing.stderr
    (tmp_path / "bad.toml").write_text("horizon_weeks = 'twelve'\n")
    bad_settings = distsync("run", "--landing", str(tmp_path), "--data-dir", str(tmp_path),
                            "--settings", str(tmp_path / "bad.toml"))
    assert bad_settings.returncode == 2 and "horizon_weeks must be a whole number" in bad_settings.stderr
    assert "Traceback" not in bad_clock.stderr + missing.stderr + bad_settings.stderr


def test_the_command_spares_the_interpreter_its_final_garbage_collections(tmp_path):
    """``distsync`` (the console script and ``python -m pipelines.cli``) freezes what is
    still alive before it exits, so that CPython's finalization does not walk every Dagster,
    pydantic and polars object again (about 0.5 s of every run; README.md, "Performance").
    Exit handlers still run, and the status is main()'s."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
        "from pipelines.cli import entry\n"
        "sys.argv = ['distsync', 'run', '--landing', sys.argv[1], '--data-dir', sys.argv[1], '--as-of', 'yesterday']\n"
        "entry()\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "distsync: --as-of must be an ISO-8601 timestamp, got 'yesterday'"
    assert out.stdout.strip() == "frozen at exit: True"


def test_the_console_script_is_the_entry_that_exits_fast():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"distsync": "pipelines.cli:entry"}
