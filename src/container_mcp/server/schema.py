"""The published tool surface: compact, closed JSON schemas, and the arguments they admit.

The SDK derives each tool's schemas from its signature and return type (pydantic); this module
turns them into what ``tools/list`` publishes, and checks every ``tools/call`` against exactly
what was published, before the SDK's own validation runs:

* **Input schemas** are closed (``additionalProperties: false`` on every object), so an unknown
  argument is refused with the list of accepted ones instead of being dropped; ``$ref`` is
  inlined (each definition is used once) and pydantic's generated ``title`` is dropped. The
  result converts under the OpenAI Agents SDK's strict rules and is valid JSON Schema 2020-12.
* **Output schemas** keep only the top level: each field's JSON type(s), ``null`` among them
  where a result may lack a value. That is what a client needs to accept ``structuredContent``
  and what tells a model which fields a result has. ``required`` is left out (~720 bytes): it
  named the fields without a pydantic default, not those a result carries (every result has
  every field), so it told a model nothing. The full pydantic schemas were 63% of ``tools/list`` (the Container
  definition repeated per tool, ~7,000 tokens in every conversation), while a model reads the
  returned values, which carry their own meaning (OpenAI's field names, ids with prefixes, a
  ``hint`` where a next step is needed). What a field means is said where it is used: in the
  tool's description or the parameter that consumes it.
* **Errors** name the argument and the allowed range in one sentence (``max_bytes must be at
  most 1048576 (got 2000000)``), never a pydantic dump.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

__all__ = ["ToolSchemas", "argument_error", "compact_input", "compact_output", "dedent"]


def dedent(text: str | None) -> str | None:
    """A docstring as a description: no indentation, each paragraph on one line."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            # The property using a definition describes it (with an example); the definition's own
            # descriptions (its class docstring, its fields') would say it again, per tool.
            target = _undescribed(_inline(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]), defs))
            siblings = {k: _inline(v, defs) for k, v in node.items() if k != "$ref"}
            return {**target, **siblings}
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _undescribed(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: ({n: _undescribed(v) for n, v in val.items()} if k == "properties" else _undescribed(val))
            for k, val in node.items()
            if k != "description"
        }
    if isinstance(node, list):
        return [_undescribed(v) for v in node]
    return node


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` as X with ``null`` added to its type: the same values, half the bytes."""
    branches = node.get("anyOf")
    if not (isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches):
        return node
    other = branches[0] if branches[1] == {"type": "null"} else branches[1]
    if not isinstance(other.get("type"), str) or "anyOf" in other or "enum" in other or "const" in other:
        return node
    merged = {k: v for k, v in node.items() if k != "anyOf"}
    merged.update(other)
    merged["type"] = [other["type"], "null"]
    return merged


def _strip(node: Any, keys: frozenset[str], *, close: bool) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                # Property names are data here, not keywords: a property called "title" stays.
                out[key] = {name: _strip(sub, keys, close=close) for name, sub in value.items()}
            elif key == "default" and value is None:
                continue  # an optional argument's null default says nothing its absence doesn't
            elif key not in keys:
                out[key] = _strip(value, keys, close=close)
        out = _nullable(out)
        if close and out.get("type") == "object":
            out.setdefault("properties", {})
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strip(v, keys, close=close) for v in node]
    return node


def compact_input(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` inlined, without titles, with every object closed. Descriptions and defaults stay."""
    flat = _inline(schema, schema.get("$defs", {}))
    out: dict[str, Any] = _strip(flat, frozenset({"title"}), close=True)
    return out


def _types(node: dict[str, Any]) -> list[str]:
    if "anyOf" in node:
        return sorted({t for branch in node["anyOf"] for t in _types(branch)})
    kind = node.get("type")
    if isinstance(kind, list):
        return sorted(kind)
    if isinstance(kind, str):
        return [kind]
    return ["array", "boolean", "integer", "null", "number", "object", "string"]


def compact_output(schema: dict[str, Any]) -> dict[str, Any]:
    """The top level of ``schema``: each field's JSON type(s).

    Enough for a client to validate ``structuredContent`` and for a model to see the result's
    fields; nested shapes, enums, bounds and descriptions stay out (see the module docstring).
    """
    flat = _inline(schema, schema.get("$defs", {}))
    properties: dict[str, Any] = {}
    for name, sub in flat.get("properties", {}).items():
        kinds = _types(sub)
        properties[name] = {"type": kinds[0] if len(kinds) == 1 else kinds}
    return {"type": "object", "properties": properties}


def _where(error: ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "the arguments"


_BOUND_SENTENCES = {
    "maximum": "must be at most {bound} (got {shown})",
    "minimum": "must be at least {bound} (got {shown})",
    "exclusiveMinimum": "must be greater than {bound} (got {shown})",
    "exclusiveMaximum": "must be less than {bound} (got {shown})",
    "minLength": "must be at least {bound} characters long (got {size})",
    "maxLength": "must be at most {bound} characters long (got {size})",
    "minItems": "must have at least {bound} items (got {size})",
    "maxItems": "must have at most {bound} items (got {size})",
    "const": "must be {bound!r} (got {shown})",
}
"""The sentence after the argument's name for each bound a value can break (JSON Schema keyword)."""


def _sentence(error: ValidationError) -> str:
    """One error of the published schema as one sentence naming the argument and what it admits."""
    where = _where(error)
    got: Any = error.instance
    bound: Any = error.validator_value
    schema: Any = error.schema
    kind = error.validator
    shown = repr(got)[:80]
    if kind in _BOUND_SENTENCES:
        size = len(got) if isinstance(got, str | list | dict) else None
        return f"{where} " + _BOUND_SENTENCES[kind].format(bound=bound, shown=shown, size=size)
    if kind == "enum":
        return f"{where} must be one of {', '.join(repr(v) for v in bound)} (got {shown})"
    if kind == "type":
        wanted = " or ".join(bound) if isinstance(bound, list) else bound
        return f"{where} must be of type {wanted} (got {shown})"
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "an argument"
        inside = f" in {where}" if error.absolute_path else ""
        return f"{missing} is required{inside}"
    if kind == "additionalProperties":
        allowed = ", ".join(schema.get("properties", {}))
        extra = sorted(set(got) - set(schema.get("properties", {})))
        return f"Unknown field {', '.join(extra)} in {where}; it accepts: {allowed}"
    if kind == "anyOf":
        # A nullable argument: report against the non-null branch, which is what was meant.
        branches = [s for s in bound if s.get("type") != "null"]
        if len(branches) == 1:
            sub = best_match(Draft202012Validator(branches[0]).iter_errors(got))
            if sub is not None:
                sub.path.extendleft(reversed(list(error.absolute_path)))
                return _sentence(sub)
        return f"{where} does not have an accepted form (got {shown})"
    return f"{where} is not valid: {error.message[:200]}"


def _non_finite(node: Any, path: list[str]) -> str | None:
    """The dotted path of the first NaN or infinity in ``node``, or None."""
    if isinstance(node, float) and not math.isfinite(node):
        return ".".join(path) or "the arguments"
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        found = _non_finite(value, [*path, str(key)])
        if found is not None:
            return found
    return None


def argument_error(
    tool: str, schema: dict[str, Any], arguments: dict[str, Any], validator: Draft202012Validator | None = None
) -> str | None:
    """Why ``arguments`` do not fit ``tool``'s published ``schema``, as a sentence, or None if they fit.

    ``validator``: one already built for ``schema`` (building one per call is most of the cost).
    """
    accepted: Iterable[str] = schema.get("properties", {})
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        names = ", ".join(unknown)
        plural = "arguments" if len(unknown) > 1 else "argument"
        return f"Unknown {plural} {names}; {tool} accepts: {', '.join(accepted) or 'no arguments'}."
    where = _non_finite(arguments, [])
    if where is not None:
        # JSON readers on the wire accept NaN and Infinity; NaN compares false with every bound,
        # so the schema would admit it and pydantic would refuse it with its own dump.
        return f"Invalid arguments for {tool}: {where} must be a finite number. Nothing was changed."
    error = best_match((validator or Draft202012Validator(schema)).iter_errors(arguments))
    if error is None:
        return None
    return f"Invalid arguments for {tool}: {_sentence(error)}. Nothing was changed."


class ToolSchemas:
    """The published schemas of the registered tools, computed once from the SDK's listing."""

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tools: list[dict[str, Any]] = []
        self.inputs: dict[str, dict[str, Any]] = {}
        self.validators: dict[str, Draft202012Validator] = {}
        for tool in tools:
            published = dict(tool)
            published["inputSchema"] = compact_input(tool["inputSchema"])
            if "outputSchema" in tool:
                published["outputSchema"] = compact_output(tool["outputSchema"])
            if "description" in tool:
                published["description"] = dedent(tool["description"])
            self.tools.append(published)
            self.inputs[tool["name"]] = published["inputSchema"]
            self.validators[tool["name"]] = Draft202012Validator(published["inputSchema"])
