"""The fault-mode knowledge base the agent grounds its answers on, and hybrid retrieval.

The text is the team's own (``fault_library/knowledge/fault_modes.yaml``): each defect
family, how it shows in the envelope spectrum, causes framed by the ISO 15243 failure-mode
families, what to check and how urgent per severity. ``library build`` stores it with each
library version as ``knowledge.sqlite`` (FTS5 over title and text, and a MiniLM embedding
per entry), so an answer cites the knowledge of the library it was built with.

**Hybrid retrieval.** BM25 (FTS5) finds the entries that share the question's words;
dense search (MiniLM cosine) finds those that mean the same in other words; the two
rankings are fused by reciprocal rank (RRF: Cormack, Clarke and Buettcher 2009), which
needs no score calibration between the two; ``RRF_K`` says how its k was chosen. A
question neither ranking finds relevant is told apart by its best cosine
(``KnowledgeBase.relevant``, ``MIN_COSINE``): BM25 alone matches generic words of any
question.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import yaml

__all__ = [
    "KNOWLEDGE_FILE",
    "Entry",
    "Hit",
    "KnowledgeBase",
    "load_entries",
    "rrf",
    "write_knowledge",
]

KNOWLEDGE_FILE = "knowledge.sqlite"
RRF_K = 30
"""RRF's k. The paper's 60 tied BM25 alone on bench/questions.yaml (recall@5 0.956 both).
k was then chosen by 5-fold cross-validation over {5, 10, 30, 60} (``python bench/llm.py``,
``rrf_k_cross_validated``): every fold's training questions chose 30, and the held-out
recall@5 was 0.968 against BM25's 0.956 and dense's 0.899 on the same questions. A smaller k
lets a first place in one ranking outweigh middling places in both."""
MIN_COSINE = 0.30
"""A question whose best entry is less similar than this is not answered from the knowledge
base ("I don't know"). On bench/questions.yaml (87 questions; chosen on that set, so the
figure is optimistic): the 8 questions it cannot answer reach at most 0.276; 6 of the 79 it
can answer fall under 0.30 and are refused too. Fitted without the questions it is scored
on (``bench/llm.py``, 5-fold cross-validation, balanced accuracy), the folds choose 0.22-0.29
and the held-out figures are 7 of 8 unanswerable refused, 97 % of answerable answered: that
is the honest estimate of this constant."""
Mode = Literal["hybrid", "dense", "bm25"]

# Words too common to rank on (FTS5's own tokenizer keeps them).
_STOP = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "my",
        "of",
        "on",
        "or",
        "our",
        "should",
        "the",
        "this",
        "that",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "me",
        "we",
        "us",
        "please",
        "tell",
        "about",
        "there",
        "their",
        "them",
        "they",
    )
)
_WORD = re.compile(r"[a-z0-9]+")


class Embedder(Protocol):
    model_id: str

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    title: str
    families: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    title: str
    text: str
    score: float  # RRF score (hybrid), cosine (dense) or -bm25 (bm25): higher is better
    bm25_rank: int | None
    dense_rank: int | None
    cosine: float


def default_source() -> Path:
    return Path(str(files("faultline.fault_library") / "knowledge" / "fault_modes.yaml"))


def load_entries(path: Path | None = None) -> tuple[list[Entry], str]:
    """The entries of a knowledge file and the file's sha256 (its version)."""
    raw = (path or default_source()).read_bytes()
    data = yaml.safe_load(raw)
    entries = [
        Entry(str(e["id"]), str(e["title"]), tuple(e.get("families", ())), str(e["text"]).strip())
        for e in data["entries"]
    ]
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("knowledge entries must have unique ids")
    return entries, hashlib.sha256(raw).hexdigest()


def write_knowledge(path: Path, entries: Sequence[Entry], embedder: Embedder) -> None:
    """Store entries with their embeddings and an FTS5 index in a new SQLite file."""
    vectors = embedder.encode([f"{e.title}. {e.text}" for e in entries])
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE entries (id TEXT PRIMARY KEY, title TEXT NOT NULL,
                families TEXT NOT NULL, text TEXT NOT NULL, embedding BLOB NOT NULL);
            CREATE VIRTUAL TABLE entries_fts USING fts5(id UNINDEXED, title, text,
                tokenize = 'porter');
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        for entry, vector in zip(entries, vectors, strict=True):
            conn.execute(
                "INSERT INTO entries VALUES (?,?,?,?,?)",
                (
                    entry.id,
                    entry.title,
                    ",".join(entry.families),
                    entry.text,
                    np.asarray(vector, np.float32).tobytes(),
                ),
            )
            conn.execute(
                "INSERT INTO entries_fts VALUES (?,?,?)", (entry.id, entry.title, entry.text)
            )
        conn.execute("INSERT INTO meta VALUES ('text_model', ?)", (embedder.model_id,))
    conn.close()


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the rankings an id appears in."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def fts_query(text: str) -> str | None:
    """An FTS5 OR-query of the question's content words, each quoted (no injection)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


class KnowledgeBase:
    """Read-only, loaded whole (a few dozen entries); thread-safe through one lock-free
    numpy matrix and a connection per call."""

    def __init__(self, path: Path, embedder: Embedder, *, min_cosine: float = MIN_COSINE):
        self.path = path
        self._embedder = embedder
        self.min_cosine = min_cosine
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT id, title, families, text, embedding FROM entries ORDER BY rowid"
            ).fetchall()
            model = conn.execute("SELECT value FROM meta WHERE key='text_model'").fetchone()
        conn.close()
        if model is None or model[0] != embedder.model_id:
            raise ValueError(
                f"{path}: embeddings by {model[0] if model else 'an unknown model'}, "
                f"not by {embedder.model_id}: rebuild the library"
            )
        self.entries = [Entry(r[0], r[1], tuple(filter(None, r[2].split(","))), r[3]) for r in rows]
        self._by_id = {e.id: e for e in self.entries}
        self._matrix = np.stack([np.frombuffer(r[4], dtype=np.float32) for r in rows])

    def __len__(self) -> int:
        return len(self.entries)

    def bm25(self, question: str, k: int) -> list[str]:
        query = fts_query(question)
        if query is None:
            return []
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as conn:
            found = conn.execute(
                "SELECT id FROM entries_fts WHERE entries_fts MATCH ? ORDER BY rank LIMIT ?",
                (query, k),
            ).fetchall()
        conn.close()
        return [r[0] for r in found]

    def dense(self, question: str, k: int) -> list[tuple[str, float]]:
        vector = self._embedder.encode([question])[0]
        cosines = self._matrix @ vector
        order = np.argsort(-cosines)[:k]
        return [(self.entries[i].id, float(cosines[i])) for i in order]

    def search(self, question: str, k: int = 5, mode: Mode = "hybrid") -> list[Hit]:
        """The ``k`` best entries, or none when nothing is relevant (see module doc)."""
        depth = max(k * 4, 20)
        lexical = self.bm25(question, depth) if mode != "dense" else []
        semantic = self.dense(question, len(self.entries))  # every cosine: relevance needs it
        cosine_of = dict(semantic)
        semantic_ids = [i for i, _c in semantic[:depth]]
        if mode == "bm25":
            fused = [(i, 1.0 / (RRF_K + r)) for r, i in enumerate(lexical, start=1)]
        elif mode == "dense":
            fused = [(i, cosine_of[i]) for i in semantic_ids]
        else:
            fused = rrf([lexical, semantic_ids])
        bm25_rank = {i: r for r, i in enumerate(lexical, start=1)}
        dense_rank = {i: r for r, (i, _c) in enumerate(semantic, start=1)}
        hits = []
        for entry_id, score in fused[:k]:
            entry = self._by_id[entry_id]
            hits.append(
                Hit(
                    entry.id,
                    entry.title,
                    entry.text,
                    round(score, 6),
                    bm25_rank.get(entry_id),
                    dense_rank.get(entry_id),
                    round(cosine_of.get(entry_id, float("nan")), 4),
                )
            )
        return hits

    def similarity(self, question: str, texts: Sequence[str]) -> list[float]:
        """Cosine of the question with each text (re-ranking BM25 candidates from
        elsewhere, e.g. the library's signature descriptions)."""
        if not texts:
            return []
        vectors = self._embedder.encode([question, *texts])
        return [float(v) for v in vectors[1:] @ vectors[0]]

    def relevant(self, hits: Sequence[Hit]) -> bool:
        """Whether the hits answer the question at all (see ``MIN_COSINE``)."""
        return any(h.cosine >= self.min_cosine for h in hits)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "entries": len(self)}
