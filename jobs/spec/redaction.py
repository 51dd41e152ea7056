"""Secrets never reach MLflow: what the tracker sends (params, tags, artifact copies, logs) goes through here first.

Two rules, applied together:

- by name: a value whose key looks like a secret (a word token, password, passwd, pwd, secret, credential(s),
  auth, authorization, passphrase, apikey, or the pairs api/access/private/secret/client + key/secret) is replaced
  whole. Words are split on punctuation and camelCase, so `hf_token`, `HF_TOKEN`, `apiKey`, `db.password` are
  secrets and `tokenizer`, `max_tokens`, `tokens_per_step`, `author` are not. A key that merely contains the word
  `key` (`cache_key`, `signing_key`) is redacted only when its value looks random (long, mixed case and digits).
- by shape, anywhere in any text: Hugging Face (hf_...), OpenAI/Anthropic (sk-...), GitHub (ghp_..., github_pat_...),
  GitLab (glpat-...), Slack (xox?-...), AWS access key ids (AKIA/ASIA...), Google API keys (AIza...), JWTs,
  PEM private keys, `Bearer ...`, the password of `scheme://user:password@host`, and `key=value` / `key: value` /
  `--key value` assignments whose key is a secret by name.

Everything redacted becomes REDACTED. Nothing here imports MLflow; it is plain text processing.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from typing import Any

REDACTED = "***redacted***"

SECRET_WORDS = frozenset({
    "token", "password", "passwd", "pwd", "secret", "secrets", "credential", "credentials", "auth",
    "authorization", "passphrase", "apikey", "apitoken", "accesstoken", "privatekey", "secretkey",
})
SECRET_PAIRS = frozenset({
    ("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("client", "secret"),
    ("session", "key"), ("master", "key"),
})
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

_B = r"(?<![A-Za-z0-9])"  # not glued to a longer word on the left
VALUE_PATTERNS = [re.compile(pattern) for pattern in (
    _B + r"hf_[A-Za-z0-9]{20,}",
    _B + r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{20,}",
    _B + r"gh[pousr]_[A-Za-z0-9]{20,}",
    _B + r"github_pat_[A-Za-z0-9_]{20,}",
    _B + r"glpat-[A-Za-z0-9_\-]{20,}",
    _B + r"xox[abposr]-[A-Za-z0-9\-]{10,}",
    _B + r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])",
    _B + r"AIza[0-9A-Za-z_\-]{35}",
    _B + r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
)]
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)(\s+)([A-Za-z0-9._~+/\-]{16,}=*)")
_URL_PASSWORD = re.compile(r"(?P<head>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^/\s:@'\"]{1,256}:)"
                           r"(?P<password>[^/\s@'\"]{1,1024})@")
# key=value, key: value, "key": "value", --key=value
_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<key>--?[A-Za-z][A-Za-z0-9_.\-]{0,100}|[A-Za-z_][A-Za-z0-9_.\-]{0,100})(?P<kq>['\"]?)"
    r"(?P<sep>[ \t]{0,8}[=:][ \t]{0,8})"
    r"(?P<q>['\"]?)(?P<value>[^\s'\",;}\]]+)"
)
# --key value (a command-line flag and its argument)
_FLAG = re.compile(r"(?<![A-Za-z0-9_.\-])(?P<key>--?[A-Za-z][A-Za-z0-9_.\-]{0,100})(?P<kq>)(?P<sep>[ \t]{1,8})"
                   r"(?P<q>['\"]?)(?P<value>[^\s'\"=,;\-][^\s'\",;]*)")


def key_words(key: str) -> list[str]:
    """'hf_token' → ['hf', 'token']; 'apiKey' → ['api', 'key']; 'model.tokenizer' → ['model', 'tokenizer']."""
    return [word.lower() for word in _WORD.findall(key)]


def is_secret_key(key: str) -> bool:
    """True for keys named like a secret, in any component of a dotted or slashed key."""
    words = key_words(key)
    if any(word in SECRET_WORDS for word in words):
        return True
    return any(pair in SECRET_PAIRS for pair in itertools.pairwise(words))


def is_keyish(key: str) -> bool:
    """Keys that may hold a secret (they say `key`), redacted only when the value looks random."""
    return "key" in key_words(key) or "sig" in key_words(key) or "signature" in key_words(key)


def looks_random(value: str) -> bool:
    """A long token of mixed case letters and digits with high entropy: an API key, not a name or a hash."""
    if len(value) < 20 or not re.fullmatch(r"[A-Za-z0-9_\-+=/.]+", value):
        return False
    if not (re.search(r"[a-z]", value) and re.search(r"[A-Z]", value) and re.search(r"\d", value)):
        return False
    counts = Counter(value)
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return entropy >= 3.5


def redact_text(text: str) -> str:
    """Every secret-shaped substring of `text` replaced by REDACTED (the rest unchanged)."""
    if not text:
        return text
    for pattern in VALUE_PATTERNS:
        text = pattern.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED + "@", text)
    text = _BEARER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _ASSIGNMENT.sub(_redact_assignment, text)
    return _FLAG.sub(_redact_assignment, text)


def _redact_assignment(match: re.Match[str]) -> str:
    key, value = match.group("key"), match.group("value")
    if value == REDACTED or REDACTED in value:
        return match.group(0)
    if is_secret_key(key.lstrip("-")) or (is_keyish(key.lstrip("-")) and looks_random(value)):
        return f"{key}{match.group('kq')}{match.group('sep')}{match.group('q')}{REDACTED}"
    return match.group(0)


def redact_value(key: str, value: Any) -> Any:
    """A structured value under `key`: whole when the key is a secret, else its text redacted by shape."""
    if is_secret_key(key):
        if isinstance(value, dict):  # everything under a secret key: {"credentials": {"user": ..., ...}}
            return {k: redact_value(key, v) for k, v in value.items()}
        return value if value in (None, "", [], {}) or isinstance(value, bool) else REDACTED
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, item) for item in value]
    if isinstance(value, str):
        if is_keyish(key) and looks_random(value):
            return REDACTED
        return redact_text(value)
    return value


def redact_tree(data: Any) -> Any:
    """A nested dict/list (a recipe, plan.json, launch.json) with every secret redacted."""
    if isinstance(data, dict):
        return {k: redact_value(str(k), v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_tree(item) for item in data]
    if isinstance(data, str):
        return redact_text(data)
    return data
