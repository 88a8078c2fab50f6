#!/usr/bin/env sh
# Wrapper: the benchmark with the project's virtual environment (see benchmarks/README.md).
#   benchmarks/run.sh [--scale large] [--skip-datacompy] [--profile] [--partitioned] [--code HEAD]
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../.venv/bin/python" "$here/run.py" "$@"
