"""The operator's log: timestamps in both formats, no client internals, and no secret.

The Kubernetes and HTTP clients log whole bodies and URLs at debug level (the Secrets'
`data`, blazz's `api_key` query parameter): they are held at WARNING whatever the
verbosity, so `--verbose` shows the operator's own decisions. Beside that, every secret
value the operator reads is registered with `keep_out`, and a filter on the log handler
masks it (raw and base64) in any line that would still carry it.
"""

from __future__ import annotations

import base64
import logging

import kopf

# Loggers that print request and response bodies, URLs or headers at debug or info level.
QUIET_LOGGERS = ("kubernetes_asyncio", "httpx", "httpcore", "aiohttp.client",
                 "aiohttp.access", "urllib3", "sqlalchemy.engine")
PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
MASK = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


class _Redactor(logging.Filter):
    """Masks every registered secret, and its base64 forms, in each record's message."""

    def __init__(self) -> None:
        super().__init__()
        self.values: set[str] = set()
        self._longest_first: tuple[str, ...] = ()  # sorted once per value, not per line

    def add(self, value: str) -> None:
        if len(value) < MIN_SECRET_LENGTH or value in self.values:
            return
        forms = {value, base64.b64encode(value.encode()).decode()}
        # Inside a longer base64 text (a Secret's `data` in a body) the value is encoded at
        # one of three alignments: the characters made of its bytes alone are the same.
        raw = value.encode()
        for shift in (0, 1, 2):
            encoded = base64.b64encode(b"\0" * shift + raw).decode()
            first, last = (shift + 2) // 3, (shift + len(raw)) // 3
            forms.add(encoded[first * 4:last * 4])
        self.values |= {form for form in forms if len(form) >= MIN_SECRET_LENGTH}
        self._longest_first = tuple(sorted(self.values, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.values:
            return True
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        masked, exc_text = text, record.exc_text or ""
        for value in self._longest_first:
            masked = masked.replace(value, MASK)
            exc_text = exc_text.replace(value, MASK)
        if masked != text:
            record.msg, record.args = masked, ()
        if record.exc_text:
            record.exc_text = exc_text
        return True


_redactor = _Redactor()


def keep_out(value: str) -> None:
    """Never let `value` (a secret) appear in a log line from now on."""
    _redactor.add(value)


def configure(*, verbose: bool, json_format: bool) -> None:
    """kopf's handler on the root logger, with timestamps, the redactor, quiet clients."""
    kopf.configure(verbose=verbose,
                   log_format=kopf.LogFormat.JSON if json_format else kopf.LogFormat.FULL)
    for handler in logging.getLogger().handlers:
        if not json_format:
            handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
        handler.addFilter(_redactor)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:  # one line per account event at 10,000 accounts is noise and CPU
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
