"""One way to say what is wrong with a pydantic model's input, for the server (workflow
definitions, ``phpo server create-token``) and the client (a task spec checked before it is
sent): ``location: message`` per problem, joined with ``; ``, without pydantic's boilerplate."""

from __future__ import annotations

from pydantic import ValidationError


def error_location(err: dict) -> str:
    """The dotted location of one pydantic error, without validator names (``function-...``)."""
    return ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-"))


def validation_messages(e: ValidationError, default_location: str = "") -> tuple[str, str]:
    """(first location, all messages) of a pydantic error. A problem without a location is
    said at ``default_location`` (e.g. the model's own name), when given."""
    parts, first = [], ""
    for err in e.errors():
        loc = error_location(err) or default_location
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
        first = first or loc
    return first, "; ".join(parts)
