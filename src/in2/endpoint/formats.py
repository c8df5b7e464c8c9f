"""How a reply is constrained (`response_format`), and stepping down when a server rejects it.

`json_schema` sends OpenAI's strict structured-outputs form of a pydantic model's JSON schema
(every property required, no others), `json_object` asks for any JSON object, `text` sends
nothing. A server that answers HTTP 400 naming `response_format` / `json_schema` (one that
predates structured outputs, or a model without them) makes the run step down once per level,
json_schema -> json_object -> text, for the rest of the run; each step is logged and counted.
The request key stays that of the configured format, so a re-run finds those replies cached.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import openai
from pydantic import BaseModel

log = logging.getLogger(__name__)

FORMATS = ("json_schema", "json_object", "text")
"""From the most to the least constrained: the order of the fallback."""
_NAMES = ("response_format", "json_schema")


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema in OpenAI's strict form: no extra keys, every property required."""
    schema = model.model_json_schema()
    schema.pop("description", None)  # the class docstring is for readers of the code
    schema["additionalProperties"] = False
    schema["required"] = list(schema["properties"])
    for prop in schema["properties"].values():
        prop.pop("default", None)
    return schema


def response_format(setting: str, model: type[BaseModel]) -> dict[str, Any] | None:
    """The `response_format` of a request for a reply shaped as `model` (None: send none)."""
    if setting == "json_schema":
        schema = {"name": model.__name__, "strict": True, "schema": strict_schema(model)}
        return {"type": "json_schema", "json_schema": schema}
    if setting == "json_object":
        return {"type": "json_object"}
    return None


def rejects_format(err: openai.BadRequestError) -> bool:
    """Whether a 400 is about `response_format` (the one thing a fallback can change)."""
    text = f"{err.message} {err.param or ''}".lower()
    return any(name in text for name in _NAMES)


class Fallback:
    """The format level this run has stepped down to (shared by the request threads)."""

    def __init__(self) -> None:
        self.level = 0
        self.steps = 0
        """Times the run stepped down (counted in the metrics)."""
        self._lock = threading.Lock()

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with its response_format stepped down to this run's level."""
        sent = body.get("response_format")
        if self.level == 0 or sent is None:
            return body
        level = max(FORMATS.index(sent["type"]), self.level)
        if level == FORMATS.index("text"):
            return {k: v for k, v in body.items() if k != "response_format"}
        return {**body, "response_format": {"type": FORMATS[level]}}

    def step_down(self, body: dict[str, Any], err: openai.BadRequestError) -> bool:
        """After `err` answered `body`: step down one level (True), or there is none (False)."""
        sent = body.get("response_format")
        if sent is None or not rejects_format(err):
            return False
        with self._lock:
            level = FORMATS.index(sent["type"]) + 1
            if level > self.level:
                self.level, self.steps = level, self.steps + 1
                log.warning(
                    "the server rejects response_format %s (%s); sending %s from now on",
                    sent["type"],
                    err.message[:120],
                    FORMATS[level],
                )
        return True
