"""A logging handler that keeps the messages of the records it sees, for tests that read logs."""
from __future__ import annotations

import logging


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
