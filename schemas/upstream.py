"""Upstream conventions shared by the CLI, the server and the agent."""

from __future__ import annotations

import shlex

# placeholders are substituted as whole tokens only, as upstream (docs/compatibility.md): "%IN" yes
STEERING_PLACEHOLDERS = ("%IN", "%OUT", "%NUM_POINTS", "%MAX_POINTS")
EVALUATION_PLACEHOLDERS = ("%SEGMENT_NAME",)


def substitute_tokens(command: str, values: dict[str, str]) -> str:
    """Replace each whole-token placeholder in a shell command line; everything else is kept
    byte for byte (quoting, pipes, redirections)."""
    out = []
    for tok in _split_keep_spaces(command):
        out.append(shlex.quote(values[tok]) if tok in values else tok)
    return "".join(out)


def _split_keep_spaces(s: str) -> list[str]:
    """Split on whitespace keeping the separators, so joining gives back ``s``; quotes are
    respected (a placeholder inside quotes is part of a larger token and stays)."""
    parts: list[str] = []
    cur = ""
    quote: str | None = None
    for ch in s:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
        elif ch in "'\"":
            cur += ch
            quote = ch
        elif ch.isspace():
            if cur:
                parts.append(cur)
                cur = ""
            if parts and parts[-1].isspace():
                parts[-1] += ch
            else:
                parts.append(ch)
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts
