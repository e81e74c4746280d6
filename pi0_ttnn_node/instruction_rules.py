"""One set of rules for every instruction source: ~/instruction, `instruction.default`, launch.

Rules: a text longer than MAX_INSTRUCTION_CHARS (counted on the raw text, before any processing, so
an oversized text costs nothing) is refused with reason `instruction_too_long`; a text that is not a
string is refused with `instruction_not_text`; otherwise control, zero-width and bidi formatting
characters become spaces, whitespace runs collapse to one space and the ends are stripped.
Cleaning rather than refusing control characters: pasted newlines and tabs are harmless, but they
must not reach the prompt, whose format ends with the tokenizer's own newline.

Consumers: observation_sync.ObservationAssembler (topic and default), ros/params.py (parameter
validator and configure), the launch file's `instruction` argument (it sets the parameter).
"""

from __future__ import annotations

import re
from typing import Any, Optional

from pi0_ttnn_node.errors import ObservationRejected

MAX_INSTRUCTION_CHARS = 2000
# C0/C1 controls, zero-width and bidi formatting characters, lone surrogates (undecodable bytes)
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
                            "\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s+")


def clean_instruction(text: Any, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    """Return the cleaned instruction or raise ObservationRejected with the reason.

    Reasons: instruction_not_text, instruction_too_long (checked before touching the text).
    """
    if not isinstance(text, str):
        raise ObservationRejected("instruction_not_text",
                                  f"instruction must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ObservationRejected("instruction_too_long",
                                  f"instruction has {len(text)} characters; the limit is "
                                  f"{max_chars}; send a shorter task description")
    return _WHITESPACE.sub(" ", _CONTROL_CHARS.sub(" ", text)).strip()


def instruction_refusal(text: Any, max_chars: int = MAX_INSTRUCTION_CHARS) -> Optional[str]:
    """Why `text` is refused as an instruction (one line), or None; for parameter validators."""
    try:
        clean_instruction(text, max_chars)
    except ObservationRejected as err:
        return str(err)
    return None
