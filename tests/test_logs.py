"""The log masks every secret the operator read, raw and base64, wherever it sits."""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest

from controller import logs


@pytest.fixture
def masked() -> logging.Logger:
    """A logger whose records pass the operator's redactor, as its handler's do."""
    logger = logging.getLogger("test.masked")
    logs.keep_out("sekret-api-key-1")
    return logger


def emitted(caplog: pytest.LogCaptureFixture, logger: logging.Logger, message: str,
            *args: object) -> str:
    caplog.clear()
    caplog.handler.addFilter(logs._redactor)
    try:
        logger.warning(message, *args)
    finally:
        caplog.handler.removeFilter(logs._redactor)
    return caplog.records[-1].getMessage()


@pytest.mark.parametrize("prefix", ["", "x", "xy", "xyz"], ids=["aligned", "1", "2", "3"])
def test_a_secret_is_masked_raw_and_inside_any_base64_text(
        caplog: pytest.LogCaptureFixture, masked: logging.Logger, prefix: str) -> None:
    secret_data = {"data": {"api-key": base64.b64encode(b"sekret-api-key-1").decode()}}
    body = base64.b64encode((prefix + json.dumps({"k": "sekret-api-key-1"})).encode()).decode()

    for shown in (emitted(caplog, masked, "GET %s?api_key=%s", "/api/sessions",
                          "sekret-api-key-1"),
                  emitted(caplog, masked, "response body: %s", json.dumps(secret_data)),
                  emitted(caplog, masked, "encoded body: %s", body)):
        assert "sekret-api-key-1" not in shown
        assert base64.b64encode(b"sekret-api-key-1").decode() not in shown
        assert logs.MASK in shown


def test_other_lines_pass_unchanged(caplog: pytest.LogCaptureFixture,
                                    masked: logging.Logger) -> None:
    assert emitted(caplog, masked, "placed %s on %s", "shop-1", "wa-0") == "placed shop-1 on wa-0"


def test_the_clients_that_log_bodies_are_held_at_warning_even_when_verbose() -> None:
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    logs.configure(verbose=True, json_format=False)
    try:
        assert root.level == logging.DEBUG
        for name in ("kubernetes_asyncio.client.rest", "httpx", "sqlalchemy.engine.Engine"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger("wa_controller.reconciler").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def test_the_plain_format_carries_a_timestamp() -> None:
    record = logging.LogRecord("wa_controller.x", logging.INFO, __file__, 1, "hello", (), None)
    line = logging.Formatter(logs.PLAIN_FORMAT).format(record)
    assert line.endswith("INFO    wa_controller.x: hello")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line), line
