"""Part (a) of issue 4's recall benchmark: approximate indexes on CWRU-derived signatures.

What matters on real signatures is not the neighbour overlap but whether the kNN verdict
changes: a PQ index that swaps the 7th and 12th neighbours of the same class costs
nothing. So beside :mod:`bench.recall`'s recall, speed and bytes, each row reports the
share of query windows whose :func:`~faultline.fault_library.verdict.decide` label from the
approximate top-10 (with the scores that index returns, as the agent would use them)
equals the label from the exact top-10, and the same with the 10 candidates re-scored
exactly (what a cheap re-ranking of the returned ids would give).

Split, so that no recording is on both sides (windows of one recording overlap and would
make neighbours trivially exact): the library is every DE window of the recordings not at
3 hp plus the first half of normal record 97; the queries are the 3 hp recordings' windows
plus 97's second half. A small hop (default 0.02 s) yields >= 10k library signatures, the
least 8-bit PQ can be trained on (39 x 256); IVF wants 39 x nlist, hence nlist <= 256.

    python bench/recall_cwru.py [--cwru DIR] [--hop 0.02] [--cache FILE.npz]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import tables
from bench.recall import (
    FloatMatrix,
    IdMatrix,
    RecallRow,
    build_index,
    evaluate,
    exact_search,
    pca_dims,
    retime,
)
from faultline.fault_library.verdict import decide

CANDIDATES: tuple[str, ...] = (
    "IVF64,PQ32",
    "IVF64,PQ64",
    "IVF128,PQ32",
    "IVF128,PQ64",
    "IVF256,PQ32",
    "IVF256,PQ64",
    "OPQ32_128,IVF128,PQ32",
    "OPQ64,IVF128,PQ64",
    "OPQ64,IVF256,PQ64",
    "PCAR32,IVF128,PQ32",
    "PCAR32,IVF256,PQ32",
    "PCAR32,IVF128,SQ8",
    "IVF128,SQ8",
)
NPROBES: tuple[int, ...] = (1, 4, 8, 16, 32)
AGREEMENT_TARGET = 0.99


@dataclass(frozen=True, slots=True)
class Signatures:
    library: FloatMatrix
    library_labels: npt.NDArray[np.str_]
    queries: FloatMatrix
    query_labels: npt.NDArray[np.str_]


@dataclass(frozen=True, slots=True)
class CwruRow:
    row: RecallRow
    agreement: float  # approximate top-10 with the index's own scores
    agreement_rescored: float  # the same ids with exact scores


def embed_cwru(cwru_dir: Path, hop_s: float, log: Any = None) -> Signatures:
    """Embed every recording's DE windows and split them by load (see module docstring)."""
    from faultline.encoders.spectrum import SpectrumEncoder
    from faultline.fault_library.catalog import read_manifest
    from faultline.fault_library.recordings import iter_windows, read_recording

    encoder = SpectrumEncoder()
    lib: list[FloatMatrix] = []
    lib_lab: list[str] = []
    qry: list[FloatMatrix] = []
    qry_lab: list[str] = []
    for entry in read_manifest(cwru_dir):
        rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
        duration = len(rec.signal) / rec.fs
        if entry.record_id == "97":
            parts = [(0.0, duration / 2, True), (duration / 2, None, False)]
        else:
            parts = [(0.0, None, entry.load_hp != 3)]
        for start, stop, in_library in parts:
            windows = list(
                iter_windows(
                    rec, f"cwru-{entry.record_id}", hop_s=hop_s, start_s=start, stop_s=stop
                )
            )
            vecs = encoder.encode(windows)
            (lib if in_library else qry).append(vecs)
            (lib_lab if in_library else qry_lab).extend([entry.label] * len(vecs))
        if log is not None:
            print(f"  {entry.record_id} ({entry.label}, {entry.load_hp} hp)", file=log, flush=True)
    return Signatures(
        np.concatenate(lib), np.array(lib_lab), np.concatenate(qry), np.array(qry_lab)
    )


def verdict_labels(
    ids: IdMatrix, scores: npt.NDArray[np.float32], labels: npt.NDArray[np.str_]
) -> list[str]:
    out = []
    for row_ids, row_scores in zip(ids, scores, strict=True):
        keep = row_ids >= 0
        out.append(decide(list(labels[row_ids[keep]]), list(row_scores[keep])).label)
    return out


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)]))


def cwru_table(
    sig: Signatures,
    candidates: Sequence[str],
    nprobes: Sequence[int],
    *,
    k: int = 10,
    repeats: int = 2,
    log: Any = None,
) -> tuple[list[CwruRow], list[str]]:
    """Each candidate x nprobe (nprobe <= nlist) with verdict agreement against exact."""
    xb, xq = sig.library, sig.queries
    truth = exact_search(xb, xq, k, repeats=repeats)
    exact_scores, _ = truth.index.search(xq, k)
    exact_verdicts = verdict_labels(truth.ids, exact_scores, sig.library_labels)
    out: list[CwruRow] = []
    for factory in candidates:
        built = build_index(factory, xb, xb)
        nlist = int(faiss.extract_index_ivf(built.index).nlist)
        truth = retime(truth, xq, repeats=repeats)
        rows = evaluate(built, xq, truth, [p for p in nprobes if p <= nlist], k=k, repeats=repeats)
        for r in rows:
            assert r.nprobe is not None  # every candidate is IVF
            faiss.ParameterSpace().set_index_parameter(built.index, "nprobe", r.nprobe)
            scores, ids = built.index.search(xq, k)
            rescored = np.where(
                ids >= 0, np.einsum("qd,qkd->qk", xq, xb[np.maximum(ids, 0)]), -1.0
            ).astype(np.float32)
            order = np.argsort(-rescored, axis=1)
            cw = CwruRow(
                r,
                agreement(verdict_labels(ids, scores, sig.library_labels), exact_verdicts),
                agreement(
                    verdict_labels(
                        np.take_along_axis(ids, order, 1),
                        np.take_along_axis(rescored, order, 1),
                        sig.library_labels,
                    ),
                    exact_verdicts,
                ),
            )
            out.append(cw)
            if log is not None:
                print(format_rows([cw], header=False), file=log, flush=True)
    return out, exact_verdicts


_COLUMNS = (
    "index",
    "nprobe",
    "1-R@10",
    "10-R@10",
    "verdict agree",
    "agree rescored",
    "batch ms/q",
    "exact ms/q",
    "speedup",
    "serialized MB",
    "load RSS MB",
    "train s",
)


def _cells(c: CwruRow) -> list[str]:
    r = c.row
    return [
        r.factory,
        str(r.nprobe or "-"),
        f"{r.recall1:.3f}",
        f"{r.recallk:.3f}",
        f"{c.agreement:.4f}",
        f"{c.agreement_rescored:.4f}",
        f"{r.batch_ms_per_query:.4f}",
        f"{r.exact_ms_per_query:.4f}",
        f"{r.speedup:.1f}x",
        f"{r.serialized_bytes / 1e6:.2f}",
        f"{r.rss_bytes / 1e6:.2f}" if r.rss_bytes is not None else "-",
        f"{r.train_s:.1f}",
    ]


def format_rows(rows: Sequence[CwruRow], *, header: bool = True) -> str:
    return tables.text_table(_COLUMNS, [_cells(c) for c in rows], first=26, width=15, header=header)


def markdown_rows(rows: Sequence[CwruRow]) -> str:
    return tables.markdown_table(_COLUMNS, [_cells(c) for c in rows])


def load_or_embed(cwru_dir: Path, hop_s: float, cache: Path | None) -> Signatures:
    if cache is not None and cache.is_file():
        z = np.load(cache)
        if float(z["hop_s"]) == hop_s:
            return Signatures(z["library"], z["library_labels"], z["queries"], z["query_labels"])
    t = time.perf_counter()
    sig = embed_cwru(cwru_dir, hop_s)
    n = len(sig.library) + len(sig.queries)
    print(f"embedded {n:,} windows in {time.perf_counter() - t:.1f} s", flush=True)
    if cache is not None:
        np.savez(
            cache,
            hop_s=hop_s,
            library=sig.library,
            library_labels=sig.library_labels,
            queries=sig.queries,
            query_labels=sig.query_labels,
        )
    return sig


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cwru", type=Path, default=REPO.parent / "shared" / "data" / "cwru")
    p.add_argument("--hop", type=float, default=0.02, help="window hop in seconds")
    p.add_argument("--cache", type=Path, help="npz to keep the embeddings between runs")
    p.add_argument("--candidate", action="append", help="factory string (repeatable)")
    p.add_argument("--nprobes", default=",".join(map(str, NPROBES)))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    sig = load_or_embed(args.cwru, args.hop, args.cache)
    xb = sig.library
    print(
        f"library {len(xb):,} x {xb.shape[1]}, queries {len(sig.queries):,}; "
        f"PCA: {pca_dims(xb, 0.99)} dims hold 99% of the variance, {pca_dims(xb, 0.999)} 99.9%; "
        f"faiss {faiss.__version__}, {args.threads} threads, load avg {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(format_rows([]), flush=True)
    rows, exact = cwru_table(
        sig,
        args.candidate or list(CANDIDATES),
        [int(v) for v in args.nprobes.split(",")],
        log=sys.stdout,
    )
    accuracy = agreement(exact, list(sig.query_labels))
    ok = [c for c in rows if c.agreement >= AGREEMENT_TARGET]
    print(f"\nexact kNN verdict = true label on {accuracy:.3f} of queries (context only)")
    print(f"rows with verdict agreement >= {AGREEMENT_TARGET}: {len(ok)} of {len(rows)}")
    for c in ok:
        print(f"  {c.row.factory} nprobe={c.row.nprobe}: {c.agreement:.4f}")
    if args.markdown:
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        args.markdown.write_text(
            f"<!-- bench/recall_cwru.py {stamp} on {platform.node()}, {os.cpu_count()} cpus, "
            f"load avg {os.getloadavg()[0]:.2f}, hop {args.hop} s, library {len(xb):,}, "
            f"queries {len(sig.queries):,}, exact verdict accuracy {accuracy:.3f} -->\n"
            f"{markdown_rows(rows)}\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
