"""Bearer tokens: random, shown once, stored only as a SHA-256 hash.

A salted slow hash would add nothing for 256-bit random tokens (they cannot be guessed), and
SHA-256 lets the server find a token with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "phpo_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
