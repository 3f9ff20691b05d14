"""Masking of secrets: tokens, keys, passwords and credentials inside proxy URLs."""
from __future__ import annotations

import re
from typing import Mapping

MASK = "***"
_SECRET_NAME = re.compile(r"(TOKEN|_KEY$|^KEY$|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/@\s]+)@")
_INLINE_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}\b")


def is_secret_name(name: str) -> bool:
    """True for variable names whose values must never be shown (HF_TOKEN, AWS_SECRET_KEY, ...)."""
    return bool(_SECRET_NAME.search(name))


def mask_value(value: str) -> str:
    """Hide credentials embedded in a value: `http://user:pw@proxy:3128` -> `http://***@proxy:3128`."""
    value = _URL_CREDENTIALS.sub(lambda m: m.group("scheme") + MASK + "@", value)
    return _INLINE_TOKEN.sub(MASK, value)


def mask(name: str, value: str) -> str:
    """The displayable form of one environment variable's value."""
    if is_secret_name(name):
        return MASK if value else value
    return mask_value(value)


def mask_env(env: Mapping[str, str]) -> dict:
    """A copy of an environment with every secret masked."""
    return {k: mask(k, v) for k, v in env.items()}


def mask_text(text: str, env: Mapping[str, str] = ()) -> str:
    """Mask credentials in free text, and the literal values of secret variables of `env`."""
    text = mask_value(text)
    for k, v in dict(env).items():
        if v and len(v) >= 6 and is_secret_name(k):
            text = text.replace(v, MASK)
    return text
