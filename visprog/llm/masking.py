"""Secrets kept out of everything shown or stored: server URLs, API keys and passwords.

- A URL's user info and the values of its query become ``***``
  (``http://***@host/v1?api-key=***``): :func:`mask_url` for one URL,
  :func:`mask_secrets` for every URL in a text.
- The keys and passwords the LLM clients were given are remembered
  (:func:`remember_secret`): :func:`mask_secrets` replaces each of them, and any
  part of one that starts it and is at least :data:`KEY_PREFIX` characters long
  (a server echoing ``sk-abcdef12...``), in any text.

The clients mask their own errors as they make them; the surfaces (the command
line, the web app, the HTTP API, run reports, evaluation records) mask what
they show or store; :func:`mask_logs` masks the log records of the HTTP
client, which name the URL of every request. Masking more than needed is
harmless; the real URL is still what the clients connect to.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

__all__ = ["KEY_PREFIX", "MASK", "mask_logs", "mask_secrets", "mask_url", "remember_secret", "url_secrets"]

#: What a secret is shown as.
MASK = "***"
#: The shortest start of a key that is masked where it appears on its own (``sk-abcde``...).
KEY_PREFIX = 8
#: A secret shorter than this is masked only inside URLs (a short one would hide common words).
_SHORTEST = 4
#: A URL in running text: a scheme (short: each place is tried in bounded time), ``://``, then anything but spaces
#: and quotes.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s'\"<>`]+")
#: Its parts: scheme and ``//``, user info, host and path, query, fragment.
_PARTS = re.compile(r"(?s)^([^:]+://)(?:([^/?#]*)@)?([^?#]*)(?:\?([^#]*))?(#.*)?$")
#: Punctuation that ends a sentence rather than a URL.
_TRAILING = ".,;:!)]}"
#: Query names whose values are remembered as secrets (all query values are masked in URLs).
_KEY_LIKE = re.compile(r"key|token|secret|sig|pass|auth|cred|session", re.IGNORECASE)

_secrets: set[str] = set()
_lock = threading.Lock()


def mask_url(url: str) -> str:
    """``url`` with its user info and every query value as :data:`MASK` (a text that is not a URL: as it is)."""
    match = _PARTS.match(url)
    if match is None:
        return url
    scheme, userinfo, rest, query, fragment = match.groups()
    shown = scheme + (f"{MASK}@" if userinfo is not None else "") + rest
    if query is not None:
        fields = (field.partition("=") for field in query.split("&"))
        shown += "?" + "&".join(f"{name}={MASK}" if sep else (MASK if name else "") for name, sep, _ in fields)
    return shown + (fragment or "")


def url_secrets(url: str) -> list[str]:
    """The secrets ``url`` holds: the password of its user info (else the user), and its key-like query values."""
    match = _PARTS.match(url)
    if match is None:
        return []
    _, userinfo, _, query, _ = match.groups()
    found = []
    if userinfo:
        user, _, password = userinfo.partition(":")
        found.append(password or user)
    for field in (query or "").split("&"):
        name, _, value = field.partition("=")
        if value and _KEY_LIKE.search(name):
            found.append(value)
    return [s for s in found if s]


def remember_secret(secret: str | None) -> None:
    """From now on, :func:`mask_secrets` masks ``secret`` (and each start of it of :data:`KEY_PREFIX` characters
    or more) in every text, in this process. Secrets shorter than 4 characters are masked inside URLs only."""
    if secret and len(secret) >= _SHORTEST:
        with _lock:
            _secrets.add(secret)


def mask_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every URL masked (:func:`mask_url`), and every remembered secret and every one of
    ``secrets``, whole or a start of it of :data:`KEY_PREFIX` characters or more, replaced by :data:`MASK`."""
    if not text:
        return text
    text = _URL.sub(_mask_match, text)
    with _lock:
        known = set(_secrets)
    known.update(s for s in secrets if s and len(s) >= _SHORTEST)
    for secret in sorted(known, key=len, reverse=True):
        text = _mask_one(text, secret)
    return text


def _mask_match(match: re.Match[str]) -> str:
    url = match.group()
    kept = url.rstrip(_TRAILING)
    return mask_url(kept) + url[len(kept) :]


def _mask_one(text: str, secret: str) -> str:
    """``text`` with ``secret`` masked: each start of it of :data:`KEY_PREFIX` characters or more (the whole of a
    shorter one, where it stands as a word of its own)."""
    if len(secret) < KEY_PREFIX:
        return re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", MASK, text)
    head = secret[:KEY_PREFIX]
    if head not in text:
        return text
    parts, at = [], 0
    while (found := text.find(head, at)) >= 0:
        end = found + KEY_PREFIX
        while end < len(text) and end - found < len(secret) and text[end] == secret[end - found]:
            end += 1
        parts += [text[at:found], MASK]
        at = end
    parts.append(text[at:])
    return "".join(parts)


class _MaskRecords(logging.Filter):
    """Masks the message, and the traceback, of every record of the loggers it is added to (:func:`mask_logs`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:  # formatters show the text made here
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = _MaskRecords()


def mask_logs(*names: str) -> None:
    """Mask what the loggers ``names`` log (each once, however often this is called)."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
