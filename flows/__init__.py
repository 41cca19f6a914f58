"""Prefect flows, one per user-facing job. Thin: compose config, call tasks, report."""
import os

# Our step loggers ("tasks", "infra") show in Prefect's run logs; no telemetry from local runs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,infra")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import logging  # noqa: E402

for _name in ("tasks", "infra"):  # our steps report counts and rates at INFO
    logging.getLogger(_name).setLevel(logging.INFO)
