"""Encoder throughput: spectrum windows/s single vs batched, the ONNX projection's share,
and text embeddings/s.

Spectrum: real CWRU 12-kHz 1-s windows (rpm given, as the runtime passes it from the
asset's config). ``single`` calls ``encode`` with one window; ``batched`` with
``--batch`` windows per call; ``2 workers`` runs two threads encoding batches side by
side, as the agent's pipeline workers do (numpy/scipy FFTs and onnxruntime release the
GIL). The projection's share is the time of the onnxruntime call over the whole
``encode`` of the same batch. Text: the MiniLM encoder, one text per call vs batches
(texts from ``bench/text_encode.py``). The machine's load average is printed because
other jobs on a shared 2-core box slow everything down.

    python bench/encode.py [--data-dir DIR] [--batch 128] [--n 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from text_encode import make_texts

from faultline.encoders.dsp import magnitude_spectrum
from faultline.encoders.signals import Measurement, Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.recordings import iter_windows, read_recording


def default_data_dir() -> Path:
    env = os.environ.get("FAULTLINE_CWRU_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cwru"


def load_windows(data_dir: Path, n: int) -> list[Window]:
    """``n`` 1-s windows (hop 0.5 s) cycling over the 12-kHz fault records."""
    out: list[Window] = []
    for entry in read_manifest(data_dir):
        if entry.fs != 12000.0:
            continue
        rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
        out.extend(iter_windows(rec, entry.record_id, window_s=1.0, hop_s=0.5))
    return [out[i % len(out)] for i in range(n)]


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs: the one least disturbed by other work."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def chunks(items: Sequence[Measurement], size: int) -> list[Sequence[Measurement]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def parallel(encoder: SpectrumEncoder, batches: list[Sequence[Measurement]], workers: int) -> None:
    def work(part: list[Sequence[Measurement]]) -> None:
        for b in part:
            encoder.encode(b)

    threads = [threading.Thread(target=work, args=(batches[k::workers],)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def bench_spectrum(
    encoder: SpectrumEncoder, items: Sequence[Measurement], args: argparse.Namespace
) -> None:
    n = len(items)
    batches = chunks(items, args.batch)
    encoder.encode(batches[0])  # warm-up: FFT plans, filter caches, onnxruntime arenas
    n_single = min(n, args.single)
    single = n_single / best_seconds(
        lambda: [encoder.encode([w]) for w in items[:n_single]], args.repeats
    )
    batched = n / best_seconds(lambda: [encoder.encode(b) for b in batches], args.repeats)
    two = n / best_seconds(lambda: parallel(encoder, batches, 2), args.repeats)
    view = encoder.view_of(items[0])
    feats = [encoder.features(b) for b in batches]
    t_feat = best_seconds(lambda: [encoder.features(b) for b in batches], args.repeats)
    t_proj = best_seconds(lambda: [encoder.encode_features(view, f) for f in feats], args.repeats)
    print(f"[{view}] dim {encoder.dim(view)}, {n} windows")
    print(f"  single (batch 1):      {single:8.0f} windows/s")
    ratio = batched / single
    print(f"  batched (batch {args.batch}):  {batched:8.0f} windows/s  ({ratio:.1f}x single)")
    print(f"  2 workers, batch {args.batch}: {two:8.0f} windows/s  ({two / single:.1f}x single)")
    share = t_proj / (t_feat + t_proj)
    print(
        f"  ONNX projection: {n / t_proj:8.0f} rows/s, {100 * share:.1f} % of batched encode "
        f"(features {1e3 * t_feat / n:.3f} ms/window, projection {1e3 * t_proj / n:.4f} ms/window)"
    )


def bench_text(args: argparse.Namespace) -> None:
    from faultline.encoders.text import TextEncoder

    encoder = TextEncoder(threads=args.text_threads)
    texts = make_texts(args.texts)
    encoder.encode(texts[:64])
    single = args.texts / best_seconds(lambda: [encoder.encode([t]) for t in texts], args.repeats)
    batched = args.texts / best_seconds(lambda: encoder.encode(texts, batch_size=32), args.repeats)
    print(f"[text] {encoder.model_id}, {args.texts} texts, {args.text_threads} threads")
    print(f"  single (batch 1):  {single:8.1f} texts/s")
    print(f"  batched (batch 32): {batched:8.1f} texts/s  ({batched / single:.1f}x single)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--n", type=int, default=1024, help="windows per batched run")
    parser.add_argument("--single", type=int, default=256, help="windows for the single run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--text-threads", type=int, default=2)
    parser.add_argument("--no-text", action="store_true")
    args = parser.parse_args()

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average before: {load}, cpus {os.cpu_count()}")
    t0 = time.perf_counter()
    encoder = SpectrumEncoder()
    print(f"spectrum encoder {encoder.model_id}, loaded in {time.perf_counter() - t0:.2f} s")
    windows = load_windows(args.data_dir, args.n)
    bench_spectrum(encoder, windows, args)
    bench_spectrum(encoder, [magnitude_spectrum(w) for w in windows], args)
    plain = encoder.with_projection(None)
    batches = chunks(windows, args.batch)
    v1 = args.n / best_seconds(lambda: [plain.encode(b) for b in batches], args.repeats)
    print(f"[window] v1 (no projection), batched: {v1:8.0f} windows/s")
    if not args.no_text:
        bench_text(args)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"numpy {np.__version__}")


if __name__ == "__main__":
    main()
