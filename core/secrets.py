"""Masking of secrets: tokens, keys, passwords and credentials inside proxy URLs.

Everything here runs in time linear in the text, and a line longer than LINE_CAP characters is
cut (with a note of how much was left out) before it is scanned, so a 300 kB log line or a huge
hyperparameter value costs milliseconds and nothing past the cut is ever shown unscanned.

What is masked, wherever it appears in free text:
- the value of an assignment whose name holds a secret: `HF_TOKEN=...`, `export AWS_SECRET_ACCESS_KEY=...`,
  `"db_password": "..."`, `--api_key ...` is left to the token shapes below;
- known token shapes: Hugging Face `hf_...`, GitHub `ghp_`/`gho_`/`ghs_`/`ghu_`/`github_pat_...`,
  AWS access key ids `AKIA...`/`ASIA...`, OpenAI-style `sk-...`, Slack `xox?-...`;
- credentials in URLs: `http://user:pw@proxy:3128` -> `http://***@proxy:3128`;
- the literal values of secret variables of a given environment.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

MASK = "***"
LINE_CAP = 20000  # characters of one line that are scanned and shown
_SECRET_NAME = re.compile(r"((^|_)TOKEN($|_)|_KEY$|^KEY$|^API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|(^|_)AUTH($|_))",
                          re.IGNORECASE)
_SCHEME_CHAR = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_CRED_STOP = frozenset("/@ \t\r\n\"'<>")
_CRED_MAX = 512  # a URL's user:password part longer than this is not one
_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])(?:hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
                    r"|(?:AKIA|ASIA)[0-9A-Z]{16}|sk-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,})")
# NAME = value, NAME: value, "NAME": "value" (the name at a word start, at most 80 characters)
_ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_])([A-Za-z_][A-Za-z0-9_.-]{0,79})[\"']?\s{0,4}[=:]\s{0,4}[\"']?")
_VALUE = re.compile(r"[^\s\"',;&|)}\]]+")
_QUOTED_VALUE = re.compile(r"[^\"'\n]{1,1024}")


def is_secret_name(name: str) -> bool:
    """True for variable names whose values must never be shown (HF_TOKEN, AWS_SECRET_KEY, ...)."""
    return bool(_SECRET_NAME.search(name.replace("-", "_").replace(".", "_")))


def _mask_url_credentials(text: str) -> str:
    """`scheme://user:pw@host` -> `scheme://***@host`, in one pass over the text."""
    out, pos = [], 0
    i = text.find("://")
    while i != -1:
        start = i
        while start > 0 and i - start < 32 and text[start - 1] in _SCHEME_CHAR:
            start -= 1
        j, end = i + 3, min(len(text), i + 3 + _CRED_MAX)
        while j < end and text[j] not in _CRED_STOP:
            j += 1
        if start < i and j > i + 3 and j < len(text) and text[j] == "@":
            out.append(text[pos:i + 3])
            out.append(MASK)
            pos = j
        i = text.find("://", j if j > i + 3 else i + 3)
    out.append(text[pos:])
    return "".join(out)


def _mask_assignments(text: str) -> str:
    """The value after `NAME=` / `NAME: ` / `"NAME": "` masked when NAME holds a secret. Only
    the name and separator are matched, so a value never hides the next assignment."""
    out, pos = [], 0
    for m in _ASSIGNMENT.finditer(text):
        if m.start() < pos or not is_secret_name(m.group(1)):
            continue
        v = (_QUOTED_VALUE if m.group(0)[-1] in "\"'" else _VALUE).match(text, m.end())
        if v is None or v.group(0) == MASK:
            continue
        out.append(text[pos:m.end()])
        out.append(MASK)
        pos = v.end()
    out.append(text[pos:])
    return "".join(out)


def _cap(line: str) -> str:
    if len(line) <= LINE_CAP:
        return line
    return line[:LINE_CAP] + f" [... {len(line) - LINE_CAP} more characters not shown]"


def mask_value(value: str) -> str:
    """Hide credentials embedded in a value: `http://user:pw@proxy:3128` -> `http://***@proxy:3128`,
    and known token shapes (hf_..., ghp_..., AKIA..., sk-...)."""
    if "\n" in value or len(value) > LINE_CAP:
        value = "\n".join(_cap(x) for x in value.split("\n"))
    if "://" in value:
        value = _mask_url_credentials(value)
    return _TOKEN.sub(MASK, value)


def mask(name: str, value: str) -> str:
    """The displayable form of one environment variable's value."""
    if is_secret_name(name):
        return MASK if value else value
    return mask_value(value)


def mask_env(env: Mapping[str, str]) -> dict:
    """A copy of an environment with every secret masked."""
    return {k: mask(k, v) for k, v in env.items()}


def mask_text(text: str, env: Mapping[str, str] = ()) -> str:
    """Mask credentials in free text: assignments to secret names, token shapes, URL credentials,
    and the literal values of secret variables of `env`. Lines are cut at LINE_CAP characters."""
    if not isinstance(text, str):
        text = str(text)
    for k, v in dict(env).items():
        if v and len(v) >= 6 and is_secret_name(k):
            text = text.replace(v, MASK)
    text = mask_value(text)
    if "=" in text or ":" in text:
        text = _mask_assignments(text)
    return text


def mask_data(obj: Any, env: Mapping[str, str] = ()) -> Any:
    """A copy of JSON-like data with every string masked (mask_text) and the value of every key
    that names a secret replaced by MASK: for records and journals."""
    if isinstance(obj, str):
        return mask_text(obj, env)
    if isinstance(obj, dict):
        return {k: (MASK if isinstance(k, str) and is_secret_name(k) and v not in (None, "") else mask_data(v, env))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_data(x, env) for x in obj]
    return obj
