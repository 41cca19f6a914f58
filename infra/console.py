"""Console output of a run: log records without their tracebacks.

A run's console is for people following it; its log files (Ray's session logs, the flow run's log
in Prefect) keep every traceback, and flows.common.main prints a failed run's cause once, at the end.
"""
from __future__ import annotations

import logging


class WithoutTracebacks(logging.Formatter):
    """Wraps a handler's formatter: the record is shown without its traceback or stack. Records
    whose message starts with a key of ``REPEATS`` are shown as its value instead."""

    REPEATS: dict[str, str] = {}

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info, record.msg, record.args
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        message = record.getMessage()
        short = next((v for k, v in self.REPEATS.items() if message.startswith(k)), None)
        if short is not None:
            record.msg, record.args = short, ()
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info, record.msg, record.args = saved
