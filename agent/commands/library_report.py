"""What ``faultline library`` prints: summaries and search results, as text or JSON."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faultline.encoders.signals import Window
from faultline.fault_library.library import FaultLibrary, Neighbour


def neighbour_report(
    lib: FaultLibrary,
    file: str,
    view: str,
    windows: Sequence[Window],
    hits: Sequence[Sequence[Neighbour]],
) -> dict[str, Any]:
    rows = {r["id"]: r for r in lib.describe([n.id for h in hits for n in h])}
    return {
        "version": lib.version,
        "file": file,
        "view": view,
        "windows": [
            {
                "offset_s": w.meta.get("offset_s"),
                "neighbours": [
                    {
                        "id": n.id,
                        "label": n.label,
                        "score": round(n.score, 4),
                        "shard": rows.get(n.id, {}).get("shard"),
                        "description": rows.get(n.id, {}).get("description"),
                    }
                    for n in h
                ],
            }
            for w, h in zip(windows, hits, strict=True)
        ],
    }


def text_report(lib: FaultLibrary, text: str, k: int) -> dict[str, Any]:
    return {
        "version": lib.version,
        "text": text,
        "note": "FTS5 over descriptions, bm25 rank (lower is better)",
        "matches": [
            {
                "id": h["id"],
                "label": h["label"],
                "view": h["view"],
                "rank": round(float(h["rank"]), 4),
                "shard": h["shard"],
                "description": h["description"],
            }
            for h in lib.search_text(text, k)
        ],
    }


def print_info(lib: FaultLibrary, root: Path, model_id: str) -> None:
    info = lib.info()
    match = "matches" if lib.model_id == model_id else f"DIFFERS from this agent's {model_id}"
    print(f"library {root}: version {lib.version} (built {info['created_at']})")
    print(f"  path: {lib.path}")
    print(f"  encoder: {lib.model_id} ({match})")
    print(f"  verified: {lib.verified.files} files, {lib.verified.bytes:,} bytes")
    sharding = info["sharding"]
    names = sharding["shards"]
    print(f"  shards: {len(names)} ({sharding['scheme']}): {', '.join(names)}")
    for view, spec in info["views"].items():
        labels = ", ".join(f"{k} {v}" for k, v in spec["label_counts"].items())
        print(f"  {view} view ({spec['dim']}-d, inner product): {spec['count']:,} signatures")
        print(f"    index: {spec['index']}")
        print(f"    labels: {labels or '(none)'}")
        for name, shard in info["shards"].items():
            sv = shard["views"][view]
            print(f"    {name}: {sv['count']:,} signatures; {sv.get('reason', sv['kind'])}")
    source = info["source"]
    recordings = source.get("recordings", [])
    history = source.get("history", [])
    print(
        f"  source: {source.get('dataset', '?')}, {len(recordings)} recordings"
        + (f", {len(history)} later change(s)" if history else "")
    )
    for change in history[-5:]:
        what = (
            change.get("file")
            or f"{len(change.get('from', []))} -> {len(change.get('to', []))} shards"
        )
        print(f"    {change.get('at')}: {change.get('action')} {what}")


def print_search(report: dict[str, Any]) -> None:
    if "text" in report:
        print(f"text {report['text']!r}: {len(report['matches'])} match(es), {report['note']}")
        for i, m in enumerate(report["matches"], 1):
            print(f"  {i:>3}  {m['rank']:8.3f}  {m['label']:<10} {m['id']}  {m['description']}")
        return
    for window in report["windows"]:
        print(f"{report['file']} at {window['offset_s']:.2f} s ({report['view']} view):")
        for i, n in enumerate(window["neighbours"], 1):
            print(f"  {i:>3}  {n['score']:.4f}  {n['label']:<10} {n['id']}  {n['description']}")
