"""Search latency p50/p99 for one query and micro-batches of 8/32/128 (issue 4).

The agent searches per window or per micro-batch of windows, so what an operator feels is
the time of one ``search`` call at that batch size, tail included: p99, not the mean.
Each call is timed on its own (a fresh random batch of queries each time, so caches do
not flatter repeated queries); per-query figures are the batch figures divided by its
size, i.e. throughput, not the latency any one window sees.

    python bench/latency.py [--cwru-cache FILE.npz] [--synthetic N] [--factory F]
                            [--nprobe 8] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import tables
from bench.recall import FloatMatrix, build_index
from bench.synthetic import base_vectors, make_mixture, query_vectors

BATCHES: tuple[int, ...] = (1, 8, 32, 128)


@dataclass(frozen=True, slots=True)
class LatencyRow:
    name: str
    threads: int
    batch: int
    calls: int
    p50_ms: float
    p99_ms: float

    @property
    def p50_ms_per_query(self) -> float:
        return self.p50_ms / self.batch

    @property
    def p99_ms_per_query(self) -> float:
        return self.p99_ms / self.batch


def latency(
    name: str,
    index: Any,
    queries: FloatMatrix,
    batches: Sequence[int] = BATCHES,
    *,
    k: int = 10,
    calls: int = 300,
    warmup: int = 10,
    seed: int = 0,
) -> list[LatencyRow]:
    """p50/p99 wall time of ``index.search`` per call, for each batch size."""
    rng = np.random.default_rng(seed)
    threads = faiss.omp_get_max_threads()
    rows = []
    for batch in batches:
        n_calls = max(30, calls // max(1, batch // 8))  # fewer calls for big batches
        times = []
        for i in range(warmup + n_calls):
            q = np.ascontiguousarray(queries[rng.choice(len(queries), batch, replace=False)])
            t = time.perf_counter()
            index.search(q, k)
            if i >= warmup:
                times.append(time.perf_counter() - t)
        ms = np.asarray(times) * 1e3
        p50, p99 = np.percentile(ms, [50, 99])
        rows.append(LatencyRow(name, threads, batch, n_calls, float(p50), float(p99)))
    return rows


_COLUMNS = ("index", "threads", "batch", "calls", "p50 ms", "p99 ms", "p50 ms/q", "p99 ms/q")


def _cells(r: LatencyRow) -> list[str]:
    return [
        r.name,
        str(r.threads),
        str(r.batch),
        str(r.calls),
        f"{r.p50_ms:.3f}",
        f"{r.p99_ms:.3f}",
        f"{r.p50_ms_per_query:.4f}",
        f"{r.p99_ms_per_query:.4f}",
    ]


def format_rows(rows: Sequence[LatencyRow], *, header: bool = True) -> str:
    return tables.text_table(_COLUMNS, [_cells(r) for r in rows], first=48, width=11, header=header)


def markdown_rows(rows: Sequence[LatencyRow]) -> str:
    return tables.markdown_table(_COLUMNS, [_cells(r) for r in rows])


def _sweep(name: str, index: Any, queries: FloatMatrix, threads: Sequence[int]) -> list[LatencyRow]:
    rows: list[LatencyRow] = []
    for t in threads:
        faiss.omp_set_num_threads(t)
        new = latency(name, index, queries)
        print(format_rows(new, header=False), flush=True)
        rows += new
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cwru-cache", type=Path, help="embeddings npz from bench/recall_cwru.py")
    p.add_argument("--synthetic", type=int, default=0, help="base vectors (0 = skip)")
    p.add_argument("--train", type=int, default=100_000)
    p.add_argument("--factory", default="OPQ64,IVF1024,PQ64")
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    threads = [int(v) for v in args.threads.split(",")]
    print(f"load avg {os.getloadavg()[0]:.2f}, faiss {faiss.__version__}", flush=True)
    print(format_rows([]), flush=True)
    rows: list[LatencyRow] = []
    if args.cwru_cache:
        z = np.load(args.cwru_cache)
        flat = faiss.IndexFlatIP(z["library"].shape[1])
        flat.add(z["library"])
        rows += _sweep(f"CWRU exact FlatIP ({flat.ntotal:,})", flat, z["queries"], threads)
    if args.synthetic:
        faiss.omp_set_num_threads(max(threads))
        mixture = make_mixture()
        xb = base_vectors(args.synthetic, mixture)
        built = build_index(args.factory, xb, xb[: args.train])
        print(f"built {args.factory} in {built.train_s + built.add_s:.0f} s", flush=True)
        faiss.ParameterSpace().set_index_parameter(built.index, "nprobe", args.nprobe)
        name = f"synthetic {args.factory} np{args.nprobe} ({args.synthetic:,})"
        rows += _sweep(name, built.index, query_vectors(2_000, mixture), threads)
        del built
        flat = faiss.IndexFlatIP(xb.shape[1])
        flat.add(xb)
        rows += _sweep(
            f"synthetic exact FlatIP ({args.synthetic:,})",
            flat,
            query_vectors(2_000, mixture),
            threads,
        )
    if args.markdown:
        args.markdown.write_text(
            f"<!-- bench/latency.py, load avg {os.getloadavg()[0]:.2f} -->\n{markdown_rows(rows)}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
