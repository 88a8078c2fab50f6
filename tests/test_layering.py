"""contracts/ and reconciliation/ never import dagster (checked in a fresh interpreter)."""

import pkgutil
import subprocess
import sys

import contracts
import reconciliation
from tests.conftest import ROOT


def _modules(pkg) -> list[str]:
    return [pkg.__name__] + [f"{pkg.__name__}.{m.name}" for m in pkgutil.walk_packages(pkg.__path__)]


def test_business_layers_do_not_import_dagster():
    mods = _modules(contracts) + _modules(reconciliation)
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k == 'dagster' or k.startswith('dagster.'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"dagster imported by the business layers: {out.stdout[:200]}"
    assert len(mods) > 8
