"""Signatures of the installed ttnn ops, so the emulation rejects calls the real op would reject.

ttnn 0.81.1 wraps C++ ops (nanobind) in `ttnn.decorators.FastOperation`; their overloads are the
`__nb_signature__` strings of `type(op.function).__call__`. Python ops (`from_torch`, ...) and
plain nanobind functions (`begin_trace_capture`, ...) are read with `inspect` / `__nb_signature__`.
Counterpart: emulation.py (calls `check_call` before every emulated op).
"""

from __future__ import annotations

import ast
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence

_OPEN = "([{"
_CLOSE = ")]}"


def _split_top_level(text: str) -> List[str]:
    """Split `text` at commas that are not inside brackets or quotes."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            current.append(char)
            if char == quote:
                quote = ""
            continue
        if char in "\"'":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _parameter_list(signature_text: str) -> str:
    """Return the text between the parentheses of `def name(...) -> R`."""
    start = signature_text.index("(")
    depth = 0
    for index in range(start, len(signature_text)):
        char = signature_text[index]
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth == 0:
                return signature_text[start + 1 : index]
    raise ValueError(f"unbalanced signature text: {signature_text!r}")


def _default_of(part: str, defaults: Optional[Sequence[Any]]) -> Any:
    """Return the default written in one parameter text (nanobind writes `= \\N`, index N in `defaults`)."""
    if "=" not in part:
        return inspect.Parameter.empty
    text = part.rsplit("=", 1)[1].strip()
    if text.startswith("\\") and text[1:].isdigit() and defaults is not None and int(text[1:]) < len(defaults):
        return defaults[int(text[1:])]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def parse_nb_signature(signature_text: str, defaults: Optional[Sequence[Any]] = None) -> inspect.Signature:
    """Build an `inspect.Signature` (names, kinds, real defaults) from one nanobind signature string."""
    params: List[inspect.Parameter] = []
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    for part in _split_top_level(_parameter_list(signature_text)):
        part = part.replace("\\*", "*")
        if part == "/":
            params = [p.replace(kind=inspect.Parameter.POSITIONAL_ONLY) for p in params]
            continue
        if part == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
            continue
        if part.startswith("**"):
            params.append(inspect.Parameter(part[2:].split(":")[0].strip(), inspect.Parameter.VAR_KEYWORD))
            continue
        if part.startswith("*"):
            params.append(inspect.Parameter(part[1:].split(":")[0].strip(), inspect.Parameter.VAR_POSITIONAL))
            kind = inspect.Parameter.KEYWORD_ONLY
            continue
        name = part.split(":")[0].split("=")[0].strip()
        if name == "self":
            continue
        params.append(inspect.Parameter(name, kind, default=_default_of(part, defaults)))
    # nanobind allows a required parameter after a defaulted one (ttnn.wait_for_event(cq_id=\0,
    # mesh_event)); inspect would refuse to build that signature, binding still works.
    return inspect.Signature(params, __validate_parameters__=False)


def real_signatures(op: Any) -> List[inspect.Signature]:
    """Return every overload signature of a ttnn op object, or raise ValueError if none is found."""
    function = getattr(op, "function", op)
    texts: Sequence = ()
    if getattr(op, "is_cpp_operation", False):
        texts = getattr(type(function).__call__, "__nb_signature__", ())
    elif hasattr(function, "__nb_signature__"):
        texts = function.__nb_signature__
    if texts:
        return [parse_nb_signature(entry[0], entry[2] if len(entry) > 2 else None) for entry in texts]
    try:
        return [inspect.signature(function)]
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot read the signature of {op!r}: {err}") from err


def allowed_keywords(signatures: Sequence[inspect.Signature]) -> List[str]:
    """Names a caller may pass by keyword, over all overloads."""
    names = []
    for signature in signatures:
        for param in signature.parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name not in names:
                names.append(param.name)
    return names


def check_call(op_name: str, signatures: Sequence[inspect.Signature], args: tuple, kwargs: dict) -> Dict[str, Any]:
    """Bind a call to the first overload of the real op that accepts it, with the real defaults applied.

    Raises TypeError naming the op and its accepted keywords when no overload accepts the call.
    """
    errors = []
    for signature in signatures:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            errors.append(str(err))
            continue
        bound.apply_defaults()
        return dict(bound.arguments)
    msg = (
        f"ttnn.{op_name} rejects this call ({len(args)} positional, keywords {sorted(kwargs)}): "
        f"{'; '.join(dict.fromkeys(errors))}. Keywords accepted by the installed ttnn.{op_name}: "
        f"{', '.join(allowed_keywords(signatures))}. Fix the call; the real card would reject it too."
    )
    raise TypeError(msg)


def make_checker(op_name: str, op: Any) -> Callable[[tuple, dict], Dict[str, Any]]:
    """Return `check(args, kwargs) -> arguments by name`, bound to the real signatures of `op`."""
    signatures = real_signatures(op)
    return lambda args, kwargs: check_call(op_name, signatures, args, kwargs)
