"""What the report model costs (issue 11), measured in one run on this machine:

1. **Tokens/s, the agent's report path vs bare llama-cpp-python**: the same GGUF, the same
   prompt (the evidence of a real CWRU outer-race window, after the same system prompt and
   chat template), the same grammar, thread count and seeds. The agent's path is
   ``NarrativeWriter.write`` (its parse, whitespace folding and wall-clock check
   included). Target: >= 0.9x.
2. **Time to the first report after an alert**: a ``faultline run`` process with the model
   on; the first window of an asset published, the alert and then the report awaited.
3. **Alert latency with the model busy vs idle**: the same agent settings but
   ``reports.min_interval_s 0`` (a report offered for every alert, so the worker never
   rests) against ``reports.llm false``; windows paced at a fixed rate; p50/p99 of
   publish -> alert. Target: busy p99 within 1.2x of idle.

    python bench/llm.py [--threads 1] [--seeds 5] [--windows 300] [--rate 40]

4. **Retrieval quality** on ``bench/questions.yaml`` (the team's labelled questions over
   the knowledge base): recall@5 (share of an answerable question's relevant entries in
   the top 5) and MRR for hybrid (RRF), dense-only and BM25-only; and how many
   unanswerable questions get "I don't know" and answerable ones do not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml

from bench.e2e import (
    Sink,
    add_window_args,
    cwru_dir,
    load_windows,
    run_phase,
    start_agent,
    window_messages,
)
from faultline.agent.reports.facts import facts_from
from faultline.agent.reports.writer import NarrativeWriter, default_model
from faultline.agent.transport.broker import MosquittoProcess
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.encoders.text import TextEncoder
from faultline.fault_library.diagnosis import DecisionPolicy, diagnose_batch
from faultline.fault_library.knowledge_store import (
    KNOWLEDGE_FILE,
    MIN_COSINE,
    RRF_K,
    KnowledgeBase,
    load_entries,
    rrf,
    write_knowledge,
)
from faultline.fault_library.library import open_current
from tests.harness import build_test_library, record_windows


def evidence_text(cwru: Path, library_root: Path, encoder: SpectrumEncoder) -> str:
    """The evidence the model is shown for a real outer-race window (record 133)."""
    library = open_current(library_root, expected_model_id=encoder.model_id)
    (window,) = record_windows(cwru, "133", "pump-7", 1)
    (result,) = diagnose_batch([window], encoder, library, DecisionPolicy())
    facts = facts_from(
        result,
        asset="pump-7",
        window_ts=window.ts,
        alert_id="bench",
        library_version=library.version,
    )
    library.close()
    return facts.prompt_text()


def tokens_per_s(threads: int, seeds: int, evidence: str) -> dict[str, float]:
    """Bare llama-cpp-python and the agent's writer, same model, prompt, grammar, seeds."""
    writer = NarrativeWriter(
        default_model(),
        threads=threads,
        n_ctx=1024,
        max_tokens=320,
        timeout_s=600,
        temperature=0.2,
        seed=0,
    )
    llm = writer._llm  # the same loaded weights: only the path around them differs
    prompt = writer._prompt(evidence)
    bare_tokens = bare_seconds = agent_tokens = agent_seconds = 0.0
    for seed in range(seeds):
        # Alternate which goes first so the prompt cache favours neither side.
        order = ("bare", "agent") if seed % 2 == 0 else ("agent", "bare")
        for side in order:
            if side == "bare":
                started = time.perf_counter()
                out: Any = llm.create_completion(
                    prompt=prompt,
                    grammar=writer._grammar,
                    max_tokens=320,
                    temperature=0.2,
                    seed=seed,
                    repeat_penalty=1.3,
                )
                bare_seconds += time.perf_counter() - started
                bare_tokens += out["usage"]["completion_tokens"]
            else:
                generated = writer.write(evidence, seed=seed)
                if generated is not None:
                    agent_tokens += generated.completion_tokens
                    agent_seconds += generated.seconds
    bare = bare_tokens / bare_seconds
    agent = agent_tokens / agent_seconds if agent_seconds else 0.0
    return {"bare": bare, "agent": agent, "ratio": agent / bare}


RRF_K_GRID = (5, 10, 30, 60)


def rrf_k_cross_validated(
    kb: KnowledgeBase, questions: list[dict[str, Any]], folds: int = 5
) -> dict[str, Any]:
    """How RRF_K was chosen, reproducibly: per fold, the k of RRF_K_GRID with the best
    recall@5 on the other folds' questions (ties: the larger k), scored on the held-out
    fold; BM25 alone and dense alone on the same held-out questions beside it."""
    labelled = [q for q in questions if q["relevant"]]
    rankings = [
        (set(q["relevant"]), kb.bm25(q["q"], 20), [i for i, _c in kb.dense(q["q"], 20)])
        for q in labelled
    ]

    def recall(indices: list[int], k: int | None, which: str = "hybrid") -> float:
        total = 0.0
        for i in indices:
            relevant, lexical, semantic = rankings[i]
            if which == "bm25":
                top = lexical[:5]
            elif which == "dense":
                top = semantic[:5]
            else:
                top = [item for item, _s in rrf([lexical, semantic], k=k or RRF_K)[:5]]
            total += len(relevant & set(top)) / len(relevant)
        return total

    order = list(range(len(rankings)))
    chosen, held_out = [], 0.0
    for fold in range(folds):
        test = order[fold::folds]
        train = [i for i in order if i not in set(test)]
        best = max(RRF_K_GRID, key=lambda k: (recall(train, k), k))
        chosen.append(best)
        held_out += recall(test, best)
    n = len(rankings)
    return {
        "chosen_k": chosen,
        "hybrid_held_out": held_out / n,
        "bm25": recall(order, None, "bm25") / n,
        "dense": recall(order, None, "dense") / n,
    }


def min_cosine_cross_validated(
    kb: KnowledgeBase, questions: list[dict[str, Any]], folds: int = 5
) -> dict[str, Any]:
    """MIN_COSINE as it would be fitted without seeing the questions it is scored on: per
    fold, the threshold on a 0.01 grid with the best balanced accuracy (unanswerable
    refused, answerable answered) on the other folds (the middle of the best plateau),
    scored on the held-out fold."""
    best_cosine = [max(h.cosine for h in kb.search(q["q"], 5)) for q in questions]
    answerable = [bool(q["relevant"]) for q in questions]
    grid = [round(0.15 + 0.01 * i, 2) for i in range(31)]

    def balanced(indices: list[int], threshold: float) -> float:
        yes = [best_cosine[i] >= threshold for i in indices if answerable[i]]
        no = [best_cosine[i] < threshold for i in indices if not answerable[i]]
        parts = [sum(v) / len(v) for v in (yes, no) if v]
        return sum(parts) / len(parts)

    order = list(range(len(questions)))
    chosen, refused, answered = [], 0, 0
    for fold in range(folds):
        test = set(order[fold::folds])
        train = [i for i in order if i not in test]
        top = max(balanced(train, t) for t in grid)
        plateau = [t for t in grid if balanced(train, t) == top]
        threshold = plateau[len(plateau) // 2]
        chosen.append(threshold)
        refused += sum(best_cosine[i] < threshold for i in test if not answerable[i])
        answered += sum(best_cosine[i] >= threshold for i in test if answerable[i])
    return {
        "chosen": chosen,
        "unanswerable_refused": refused / answerable.count(False),
        "answerable_answered": answered / answerable.count(True),
    }


def retrieval_quality(questions_file: Path) -> dict[str, dict[str, Any]]:
    """recall@5 and MRR per retrieval mode; "I don't know" accuracy of the hybrid path."""
    questions = yaml.safe_load(questions_file.read_text())["questions"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / KNOWLEDGE_FILE
        encoder = TextEncoder()
        entries, _sha = load_entries()
        write_knowledge(path, entries, encoder)
        kb = KnowledgeBase(path, encoder)
        out: dict[str, dict[str, Any]] = {}
        for mode in ("hybrid", "dense", "bm25"):
            recalls, ranks = [], []
            for q in questions:
                if not q["relevant"]:
                    continue
                ids = [h.id for h in kb.search(q["q"], 5, mode)]
                relevant = set(q["relevant"])
                recalls.append(len(relevant & set(ids)) / len(relevant))
                first = next((i for i, x in enumerate(ids, start=1) if x in relevant), None)
                ranks.append(1.0 / first if first else 0.0)
            out[mode] = {
                "recall_at_5": sum(recalls) / len(recalls),
                "mrr": sum(ranks) / len(ranks),
                "questions": float(len(recalls)),
            }
        known = [kb.relevant(kb.search(q["q"], 5)) for q in questions]
        answerable = [k for k, q in zip(known, questions, strict=True) if q["relevant"]]
        unanswerable = [not k for k, q in zip(known, questions, strict=True) if not q["relevant"]]
        out["dont_know"] = {
            "unanswerable_refused": sum(unanswerable) / len(unanswerable),
            "answerable_answered": sum(answerable) / len(answerable),
            "unanswerable": float(len(unanswerable)),
        }
        out["rrf_k"] = rrf_k_cross_validated(kb, questions)
        out["min_cosine"] = min_cosine_cross_validated(kb, questions)
    return out


def first_report_s(port: int, library_root: Path, tmp: Path, windows: list[Any]) -> float:
    """Seconds from publishing an asset's first window to its report arriving."""
    prefix = f"llm-first-{uuid.uuid4().hex[:6]}"
    proc = start_agent(
        port, library_root, prefix, tmp / "first", {"FAULTLINE__REPORTS__LLM": "true"}
    )
    got = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
    client.on_message = lambda _c, _u, _m: got.set()
    client.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/reports/+", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.5)
    ((topic, _key, payload),) = window_messages(windows[:1], "binary", prefix)
    started = time.monotonic()
    client.publish(topic, payload, qos=1)
    got.wait(300)
    seconds = time.monotonic() - started
    client.loop_stop()
    proc.terminate()
    proc.wait(60)
    return seconds


def alert_latency(
    port: int, library_root: Path, tmp: Path, windows: list[Any], rate: float, busy: bool
) -> dict[str, float]:
    prefix = f"llm-{'busy' if busy else 'idle'}-{uuid.uuid4().hex[:6]}"
    env = (
        {"FAULTLINE__REPORTS__LLM": "true", "FAULTLINE__REPORTS__MIN_INTERVAL_S": "0"}
        if busy
        else {"FAULTLINE__REPORTS__LLM": "false"}
    )
    proc = start_agent(port, library_root, prefix, tmp / prefix, env)
    sink = Sink(port, f"{prefix}/alerts/+", key="alert")
    try:
        return run_phase(port, sink, window_messages(windows, "binary", prefix), 1.0 / rate)
    finally:
        sink.close()
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_args(parser, windows=300, fmt="binary")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--seeds", type=int, default=5, help="generations per side")
    parser.add_argument("--rate", type=float, default=40.0, help="windows/s, latency phases")
    parser.add_argument(
        "--retrieval-only", action="store_true", help="only the question-retrieval figures"
    )
    args = parser.parse_args()
    quality = retrieval_quality(REPO / "bench" / "questions.yaml")
    print(f"{'retrieval (bench/questions.yaml)':<34}{'recall@5':>10}{'MRR':>8}")
    for mode in ("hybrid", "dense", "bm25"):
        row = quality[mode]
        print(f"  {mode:<32}{row['recall_at_5']:>10.3f}{row['mrr']:>8.3f}")
    dont = quality["dont_know"]
    print(
        f'  "I don\'t know": {dont["unanswerable_refused"]:.0%} of {dont["unanswerable"]:.0f} '
        f"unanswerable questions; answerable ones answered {dont['answerable_answered']:.0%}"
    )
    cv = quality["rrf_k"]
    print(
        f"  RRF k by 5-fold cross-validation over {RRF_K_GRID}: chosen {cv['chosen_k']} "
        f"(RRF_K = {RRF_K}); held-out recall@5 hybrid {cv['hybrid_held_out']:.3f}, "
        f"bm25 {cv['bm25']:.3f}, dense {cv['dense']:.3f}"
    )
    mc = quality["min_cosine"]
    print(
        f"  MIN_COSINE by 5-fold cross-validation: chosen {mc['chosen']} (MIN_COSINE = "
        f"{MIN_COSINE}); held out: unanswerable refused {mc['unanswerable_refused']:.0%}, "
        f"answerable answered {mc['answerable_answered']:.0%}"
    )
    if args.retrieval_only:
        return
    cwru = cwru_dir(args.cwru)
    windows = load_windows(cwru, args.windows)
    with tempfile.TemporaryDirectory() as tmp_name, MosquittoProcess() as broker:
        tmp = Path(tmp_name)
        encoder = SpectrumEncoder()
        library_root = tmp / "library"
        build_test_library(cwru, library_root, encoder)
        evidence = evidence_text(cwru, library_root, encoder)
        speed = tokens_per_s(args.threads, args.seeds, evidence)
        first = first_report_s(broker.port, library_root, tmp, windows)
        idle = alert_latency(broker.port, library_root, tmp, windows, args.rate, busy=False)
        busy = alert_latency(broker.port, library_root, tmp, windows, args.rate, busy=True)
    print(
        f"report model {default_model().model_id}, {args.threads} thread(s), {args.seeds} "
        f"seeds per side, {os.cpu_count()} cores; evidence of a real CWRU outer-race window"
    )
    rows = [
        ("tokens/s, bare llama-cpp-python", f"{speed['bare']:.1f}", "", ""),
        (
            "tokens/s, agent report path",
            f"{speed['agent']:.1f}",
            f"{speed['ratio']:.2f}x",
            ">= 0.9x",
        ),
        ("first report after the alert", f"{first:.1f} s", "", ""),
        (
            f"alert p50 / p99 ms, model idle ({args.rate:.0f}/s)",
            f"{idle['p50']:.1f} / {idle['p99']:.1f}",
            "",
            "",
        ),
        (
            "alert p50 / p99 ms, model busy",
            f"{busy['p50']:.1f} / {busy['p99']:.1f}",
            f"{busy['p99'] / idle['p99']:.2f}x",
            "<= 1.2x",
        ),
    ]
    for name, value, ratio, target in rows:
        print(f"{name:<42}{value:>16}{ratio:>9}{target:>10}")
    print(json.dumps({"speed": speed, "first_report_s": first, "idle": idle, "busy": busy}))


if __name__ == "__main__":
    main()
