"""`medals bench …`: performance benchmarks. Each module here (and the server's) registers one kind."""
from __future__ import annotations

import importlib

# Modules that contribute a benchmark kind: each has `register(kinds)` and sets `func` on its parser.
BENCH_MODULES = ("medals.bench.prompts", "medals.bench.forward", "medals.bench.gpu", "medals.bench.refine",
                 "medals.server.bench")


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="performance benchmarks")
    kinds = bench.add_subparsers(dest="benchmark", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(kinds)
