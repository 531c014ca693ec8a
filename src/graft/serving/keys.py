"""API keys and daily quotas for ``graft serve --api-keys FILE``.

The file has one key per line, ``KEY QUOTA`` (whitespace or a comma between; ``#`` starts a comment): QUOTA
identifications per UTC day. Keys are compared in constant time against every known key (never looked up by the
secret), and never logged or echoed. Counts live in memory: a restart gives every key its full quota again.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from graft.errors import ConfigError
from graft.files import read_text

DAY = 86_400
MAX_KEYS_BYTES = 10_000_000
WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


class KeyRefused(Exception):
    """401 (missing or unknown key) or 429 (quota spent), with the headers to send."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class KeyRing:
    quotas: dict[str, int]
    _used: dict[str, tuple[dt.date, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def read(cls, path: str | Path) -> KeyRing:
        path = Path(path)
        try:
            lines = read_text(path, MAX_KEYS_BYTES).splitlines()
        except (OSError, ValueError) as error:  # ValueError: not UTF-8, or too large
            raise ConfigError(f"{path}: cannot read the API keys ({error}); give a text file of 'KEY QUOTA' "
                              "lines") from error
        quotas = {}
        for number, line in enumerate(lines, start=1):
            parts = line.split("#", 1)[0].replace(",", " ").split()
            if not parts:
                continue
            if len(parts) != 2 or not WHOLE_NUMBER.fullmatch(parts[1]):
                raise ConfigError(f"{path}: line {number} is not 'KEY QUOTA' (a key, then a whole number of "
                                  "identifications per day); fix the line")
            quotas[parts[0]] = int(parts[1])
        if not quotas:
            raise ConfigError(f"{path}: no keys; add 'KEY QUOTA' lines or serve without --api-keys")
        return cls(quotas)

    def check(self, given: str | None) -> None:
        """401 (:class:`KeyRefused`) unless ``given`` is a known key: asked before any work is done for a request."""
        if self._match(given or "") is None:
            raise KeyRefused(401, "missing or invalid api-key: pass your key as the api-key query parameter")

    def spend(self, given: str | None) -> int:
        """Count one identification for the key ``given``; the identifications it has left today.

        Raises :class:`KeyRefused`: 401 without a known key, 429 (with ``RateLimit`` headers) once today's quota is
        spent."""
        self.check(given)
        key = self._match(given or "")
        quota, today = self.quotas[key], dt.datetime.now(dt.UTC).date()
        with self._lock:
            day, used = self._used.get(key, (today, 0))
            used = used if day == today else 0
            if used >= quota:
                raise KeyRefused(429, f"daily quota of {quota} identifications reached; it resets at 00:00 UTC",
                                 rate_limit_headers(quota, 0))
            self._used[key] = (today, used + 1)
            return quota - used - 1

    def quota_of(self, given: str | None) -> int:
        key = self._match(given or "")
        return self.quotas[key] if key is not None else 0

    def _match(self, given: str) -> str | None:
        found = None
        for key in self.quotas:  # every key compared, in constant time: the time says nothing about the secret
            if hmac.compare_digest(key.encode(), given.encode()):
                found = key
        return found


class RedactKeys(logging.Filter):
    """Pl@ntNet clients send the key in the query string: an access log line shows ``api-key=***`` instead."""

    pattern = re.compile(r"(api-key=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api-key=" in message:
            record.msg, record.args = self.pattern.sub(r"\1***", message), None
        return True


def redact_keys_in_access_logs() -> None:
    """Install :class:`RedactKeys` on uvicorn's access log (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactKeys) for f in access.filters):
        access.addFilter(RedactKeys())


def rate_limit_headers(quota: int, remaining: int) -> dict[str, str]:
    """The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers): the policy and what is left of it."""
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    reset = int((midnight - now).total_seconds())
    return {"RateLimit-Policy": f"{quota};w={DAY}", "RateLimit": f"limit={quota}, remaining={remaining}, reset={reset}"}
