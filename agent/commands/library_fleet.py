"""``faultline library search --fleet``: the same search, asked of the whole fleet.

The windows of FILE are embedded here, as the agent does, and sent with ``k`` and the view
to ``<prefix>/fleet/search`` (or the ``--text`` words, for the signature descriptions); a
coordinating gateway scatters them over every shard's holders and answers with the merged
top-k and the shards that did not reply (docs/ARCHITECTURE.md, "Fleets").
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from faultline.agent.app import encoder_from_settings, topics_from_settings
from faultline.agent.commands.recording_args import recording_from_args
from faultline.agent.fleet.ask import FleetUnreachableError, ask_fleet
from faultline.agent.settings import Settings
from faultline.encoders.dsp import magnitude_spectrum
from faultline.fault_library.recordings import RecordingError, iter_windows

__all__ = ["fleet_search", "print_fleet"]


def fleet_search(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {"k": args.k, "view": args.view}
    if args.text is not None:
        body["text"] = args.text
    else:
        try:
            recording = recording_from_args(args.file, args)
        except RecordingError as exc:
            print(f"faultline: {exc}", file=sys.stderr)
            return 2
        windows = list(
            iter_windows(
                recording, "search", window_s=settings.encoder.window_s, start_s=args.start
            )
        )[: args.windows]
        if not windows:
            print(f"faultline: {args.file}: no whole window after {args.start} s", file=sys.stderr)
            return 2
        items = windows if args.view == "window" else [magnitude_spectrum(w) for w in windows]
        vectors = encoder_from_settings(settings).encode(items)
        body["vectors"] = np.asarray(vectors, dtype=np.float64).tolist()
    topics = topics_from_settings(settings)
    try:
        answer = ask_fleet(
            settings.mqtt, topics, json.dumps(body).encode(), settings.fleet.deadline_s + 5.0
        )
    except FleetUnreachableError as exc:
        print(f"faultline: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print_fleet(answer)
    return 1 if "error" in answer else 0


def print_fleet(answer: dict[str, Any]) -> None:
    error = answer.get("error")
    if error:
        print(f"fleet refused the search: {error.get('code')}: {error.get('reason')}")
        return
    for q, hits in enumerate(answer.get("results", [])):
        print(f"query {q + 1} ({answer.get('text') or answer.get('view')}):")
        for i, h in enumerate(hits, 1):
            value = f"{h['score']:.4f}" if "score" in h else f"{h.get('rank', 0.0):8.3f}"
            what = h.get("label") or h.get("description", "")
            print(f"  {i:>3}  {value}  {h['shard']:<10} {h['id']}  {what}")
    shards = answer.get("shards", [])
    print(
        f"{len(answer.get('answered_shards', []))} of {len(shards)} shards answered "
        f"(coordinator {answer.get('agent_id')}, library {answer.get('library_version')})"
    )
    for shard, why in (answer.get("missing") or {}).items():
        print(f"PARTIAL: {shard} missing: {why.get('code')}: {why.get('reason')}")
