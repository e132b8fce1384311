"""What a question message says (pure): its text, the asset it names, where to answer.

Two forms, so that both the stock ``mosquitto_rr`` and an MQTT 3.1.1 client can ask:

* plain UTF-8 text; with MQTT 5 the response topic and correlation data come as
  properties (``mosquitto_rr -V mqttv5 -t <query> -e <response> -m "question"``);
* a JSON object ``{"question": str, "asset": str?, "reply_to": str?, "correlation_id":
  str?}``; ``reply_to`` and ``correlation_id`` are how a 3.1.1 client, which has no
  properties, asks for a reply.

Bounds come before parsing: a question is at most ``MAX_QUESTION_BYTES``; JSON is parsed
only up to that size and must be one flat object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from faultline.agent.coded_error import CodedError

__all__ = [
    "MAX_QUESTION_BYTES",
    "MAX_QUESTION_CHARS",
    "Question",
    "QuestionError",
    "parse_question",
]

MAX_QUESTION_BYTES = 4096
MAX_QUESTION_CHARS = 500
_TOPIC = re.compile(r"^[^#+\x00]{1,200}$")


class QuestionError(CodedError):
    """A question refused with an error reply (``code`` as in the answer's ``error``)."""


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    asset: str | None
    reply_to: str | None
    correlation_id: str | None


def parse_question(payload: bytes) -> Question:
    if len(payload) > MAX_QUESTION_BYTES:
        raise QuestionError(
            "question_too_large",
            f"{len(payload)} bytes; a question is at most {MAX_QUESTION_BYTES}",
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QuestionError("bad_encoding", f"not UTF-8 (byte {exc.start})") from None
    stripped = text.strip()
    asset = reply_to = correlation_id = None
    if stripped.startswith("{"):
        try:
            body = json.loads(stripped)
        except ValueError as exc:
            raise QuestionError("bad_json", f"not JSON: {str(exc)[:120]}") from None
        except RecursionError:  # '{"a": [[[[...' nested deeper than the interpreter's stack
            raise QuestionError("bad_json", "JSON is nested too deeply") from None
        if not isinstance(body, dict):
            raise QuestionError("bad_json", "expected a JSON object")
        stripped = _string(body, "question", required=True) or ""
        asset = _string(body, "asset")
        reply_to = _string(body, "reply_to")
        correlation_id = _string(body, "correlation_id")
        if reply_to is not None and not _TOPIC.match(reply_to):
            raise QuestionError("bad_reply_to", "reply_to must be a topic without wildcards")
    if not stripped:
        raise QuestionError("empty_question", "the question is empty")
    if len(stripped) > MAX_QUESTION_CHARS:
        raise QuestionError(
            "question_too_long", f"{len(stripped)} characters; at most {MAX_QUESTION_CHARS}"
        )
    return Question(" ".join(stripped.split()), asset, reply_to, correlation_id)


def _string(body: dict[str, object], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise QuestionError("bad_question", f"'{key}' is required")
        return None
    if not isinstance(value, str) or len(value) > MAX_QUESTION_CHARS:
        raise QuestionError("bad_question", f"'{key}' must be a string of at most 500 characters")
    return value
