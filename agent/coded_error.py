"""One shape for every refusal the agent answers with a reason code.

Payloads, binary layouts, questions and fleet requests are refused the same way: a stable
``code`` that operators count and filter on (the errors topic, ``/metrics``), and a
``message`` that says what was wrong in words.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["CodedError"]


class CodedError(ValueError):
    """A refusal: ``code`` for machines, ``message`` for people."""

    code_in_text: ClassVar[bool] = False
    """Whether ``str(error)`` starts with the code (``"<code>: <message>"``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if self.code_in_text else message)
        self.code = code
        self.message = message
