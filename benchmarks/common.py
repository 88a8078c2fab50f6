"""Measurement helpers shared by the benchmark scripts (standard library only).

Every figure comes from the kernel, never from guesses:

* wall time: ``time.perf_counter`` around the child process;
* CPU time: user + system of the child, from ``os.wait4`` (the child's own rusage, all
  its threads, DuckDB's worker threads included);
* peak RSS: ``ru_maxrss`` of that rusage (kB on Linux), or ``VmHWM`` of
  ``/proc/self/status`` read inside a process;
* machine load: ``/proc/loadavg`` before a run, and the CPU the *rest of the machine*
  used while the run was going on: busy jiffies of ``/proc/stat`` over the run minus the
  child's own CPU, divided by the wall time (``others_cores``; 0 = the machine was ours);
* disk wait: the ``iowait`` jiffies of ``/proc/stat`` over the run (machine-wide, summed
  over the cores: time a core sat idle while a disk read or write was outstanding). Near 0
  when the run's files came from the page cache.

Before each measured run the benchmark reads the files the run reads once, untimed
(:func:`ready_to_measure`), so every run, floor and partitioned variant starts from the
same warm page cache: on a machine whose cache was reclaimed between runs, disk reads would otherwise be
charged to whichever run read a file first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def put_code_on_path() -> None:
    """Let a child script import the project: ``run.py`` points ``PYTHONPATH`` at the code
    under test; without it (a script started by hand) this checkout's code is used."""
    if not os.environ.get("PYTHONPATH") and str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_cpu_seconds() -> tuple[float, float]:
    """Since boot, summed over the cores: the seconds the machine was busy, and the
    seconds a core sat idle with disk I/O outstanding (``iowait``)."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is in user
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy / HZ, v[4] / HZ


def _files_under(paths: Iterable[Path]) -> Iterator[str]:
    """Each of ``paths`` that is a file, and every file under each that is a folder."""
    for path in paths:
        if os.path.isfile(path):
            yield str(path)
        else:
            for dirpath, _dirs, files in os.walk(path):
                yield from (os.path.join(dirpath, name) for name in files)


def read_into_page_cache(paths: Iterable[Path]) -> dict:
    """Read each of ``paths`` (files, or folders read whole) once, discarding the bytes,
    so that the next run finds them in the page cache. Returns the bytes read and the
    seconds it took: well above MiB / 2000 s means the cache had lost them and they came
    from the disk."""
    t0 = time.perf_counter()
    total = 0
    buf = bytearray(8 << 20)
    for name in _files_under(paths):
        try:
            with open(name, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
        except OSError:  # a file removed or unreadable meanwhile: nothing to warm
            continue
    return {"bytes": total, "seconds": round(time.perf_counter() - t0, 2)}


def proc_status_kb(field: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def others_busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by other processes over the next ``seconds`` (we are idle meanwhile)."""
    b0 = machine_cpu_seconds()[0]
    own0 = sum(os.times()[:4])
    time.sleep(seconds)
    own = sum(os.times()[:4]) - own0
    return max(0.0, (machine_cpu_seconds()[0] - b0 - own) / seconds)


MAX_WAIT_S = 120.0  # --max-wait
QUIET_CORES = 0.75  # --quiet-cores


def add_quiet_options(parser) -> None:
    """``--max-wait`` and ``--quiet-cores``, the options of :func:`wait_for_quiet`, for
    ``run.py`` and the scripts it starts (which get them passed on)."""
    parser.add_argument("--max-wait", type=float, default=MAX_WAIT_S,
                        help="before each measured run, wait at most this many seconds for a quiet machine")
    parser.add_argument("--quiet-cores", type=float, default=QUIET_CORES,
                        help="'quiet' = others use fewer cores than this")


def wait_for_quiet(log, max_wait: float = MAX_WAIT_S, limit_cores: float = QUIET_CORES,
                   limit_load: float = 1.5) -> dict:
    """Wait (at most ``max_wait`` s) until others use less than ``limit_cores`` cores.

    The 1-minute load average is reported but not waited on alone: right after one of our
    own runs it still carries that run. ``others_cores`` is measured while we are idle,
    so it is the others' load only.
    """
    started = time.monotonic()
    sample = 2.0 if max_wait >= 20 else 0.25  # --max-wait 0 (smoke test): only a glance
    while True:
        busy = others_busy_cores(sample)
        load = loadavg()
        waited = time.monotonic() - started
        if busy < limit_cores or waited >= max_wait:
            state = {"load1": load[0], "load5": load[1], "load15": load[2], "others_cores_before": round(busy, 2),
                     "waited_s": round(waited, 1), "quiet": busy < limit_cores}
            if not state["quiet"]:
                log(f"  machine still busy after {waited:.0f} s (others {busy:.2f} cores, load {load[0]}): "
                    f"measuring anyway")
            elif load[0] > limit_load:
                log(f"  load average {load[0]} (others now {busy:.2f} cores)")
            return state
        log(f"  others use {busy:.2f} cores (load {load[0]}): waiting ...")
        time.sleep(8)


def ready_to_measure(log, reads: Iterable[Path], max_wait: float = MAX_WAIT_S,
                     limit_cores: float = QUIET_CORES) -> dict:
    """Before each measured run: the files the run reads (``reads``: files, or folders
    read whole) read into the page cache (:func:`read_into_page_cache`, as ``warmed``),
    then a quiet machine (:func:`wait_for_quiet`, whose state this returns)."""
    warmed = read_into_page_cache(reads)
    state = wait_for_quiet(log, max_wait=max_wait, limit_cores=limit_cores)
    state["warmed"] = warmed
    return state


def run_measured(cmd: list[str], *, log_prefix: Path, env: dict | None = None, cwd: Path | None = None,
                 timeout: float | None = None) -> dict:
    """Run ``cmd`` as a child; return wall, CPU (user+sys), peak RSS and the others' load.

    stdout/stderr go to ``<log_prefix>.out`` / ``.err``.
    """
    log_prefix.parent.mkdir(parents=True, exist_ok=True)
    out = open(f"{log_prefix}.out", "wb")
    err = open(f"{log_prefix}.err", "wb")
    busy0, iowait0 = machine_cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    busy1, iowait1 = machine_cpu_seconds()
    busy, iowait = busy1 - busy0, iowait1 - iowait0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.close()
    err.close()
    cpu = ru.ru_utime + ru.ru_stime
    return {
        "cmd": " ".join(str(c) for c in cmd),
        "returncode": proc.returncode,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "user_s": round(ru.ru_utime, 3),
        "sys_s": round(ru.ru_stime, 3),
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
        "others_cores_during": round(max(0.0, busy - cpu) / wall, 2) if wall > 0 else None,
        # the kernel's iowait counter can step back (proc_stat(5): "The value in this field
        # may decrease in certain conditions"), which would print a negative disk wait
        "iowait_s": round(max(0.0, iowait), 2),
        "stdout": f"{log_prefix}.out",
        "stderr": f"{log_prefix}.err",
    }


def tail(path: str | Path, n: int = 5) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def project_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable
