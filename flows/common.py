"""What every flow shares: the `overrides` parameter type and a Flow that refuses credentials
before Prefect records anything.

Prefect stores a flow run's parameters (here: the Hydra override strings) in its database
when it creates the run, before the flow body runs; for a deployment, the server stores
them when the run is requested. So an override carrying a credential (``storage.secret=...``)
is refused at both doors, never only inside the flow body:

- a direct call (``python -m flows.x ...``, ``preprocess([...])`` in Python, a subflow):
  :class:`AvsFlow` checks the overrides in ``__call__``, before the flow run is created;
- a deployment run (``prefect deployment run ... --param``, the UI, ``run_deployment``): the
  flow's parameter schema refuses every override that does not match
  :data:`infra.config.NO_CREDENTIALS_PATTERN`, which the Prefect server enforces (deployments
  enforce their parameter schema by default) before it stores the run, saying why in words
  (:data:`REFUSED_OVERRIDE`) without the value.

The flow body composes the config with :func:`infra.config.compose`, which refuses them once
more. Credentials reach a flow through the environment, a Prefect Secret block named by
``storage.secret_block``, or the work pool's job variables (see infra/schema/storage.py).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Annotated, Any

from prefect._internal.concurrency.services import _QueueServiceBase
from prefect.flows import Flow
from pydantic import Field

from infra.console import WithoutTracebacks
from infra.config import NO_CREDENTIALS_PATTERN, ConfigError, check_overrides, redact_overrides

def _drop_prefect_exit_hooks() -> None:
    """In a child forked from a process that ran a flow: forget Prefect's queue-service exit hooks.

    Prefect 3.8.8 resets its log and event services in a forked child but leaves their exit
    hooks registered (``threading._register_atexit``); at the child's exit the hook drains a
    reset service, fails an assertion and the child ends with status 1. torch's DataLoader
    reads that as "worker exited unexpectedly with exit code 1", so a flow that trains or
    evaluates with loader workers in its own process would fail. The child has no service of
    its own to drain: dropping the inherited hooks is all it needs.
    """
    hooks = getattr(threading, "_threading_atexits", None)  # threading wraps each hook in a partial
    if hooks:
        hooks[:] = [h for h in hooks
                    if not isinstance(getattr(getattr(h, "func", h), "__self__", None), _QueueServiceBase)]


os.register_at_fork(after_in_child=_drop_prefect_exit_hooks)

# What the Prefect server answers to a deployment run with a credential override: "Validation
# failed for field 'overrides[0]'. Failure reason: '<this>' was expected". The JSON schema says "if
# the override does not match NO_CREDENTIALS_PATTERN, it must equal this text" because, of the
# validators the server's jsonschema knows, only `const` words its refusal without quoting the
# value (a `pattern` refusal prints the value and the raw regular expression).
REFUSED_OVERRIDE = (
    "an override without credentials, since Prefect stores a run's parameters in clear: pass S3 credentials "
    "through the worker's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), a Prefect Secret block named "
    "by the override storage.secret_block=<block name>, or the work pool's job variables (README, Storage)"
)
# One Hydra override string. The schema is for the Prefect server (and UI) only: Python-side
# validation runs after the run is recorded, and Prefect would log the refused value.
Override = Annotated[str, Field(
    json_schema_extra={"if": {"not": {"pattern": NO_CREDENTIALS_PATTERN}}, "then": {"const": REFUSED_OVERRIDE}},
    description="A Hydra override, e.g. data.uri=s3://bucket/videos. Never a credential: see storage.secret_block.",
)]
Overrides = list[Override] | None


class AvsFlow(Flow):
    """A Prefect Flow that refuses credential overrides before a flow run exists."""

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any):
        bound = self._bind(args, kwargs)
        check_overrides(bound.get("overrides"))  # ConfigError: nothing has been sent to Prefect yet
        return super().__call__(*args, return_state=return_state, wait_for=wait_for, **kwargs)

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        # What Prefect stores as the run's parameters. __call__ has refused credentials already;
        # this keeps them out even on a path that skips __call__ (the engine called directly).
        out = super().serialize_parameters(parameters)
        if isinstance(out.get("overrides"), list):
            out["overrides"] = redact_overrides([str(o) for o in out["overrides"]])
        return out

    def with_options(self, **kwargs: Any) -> AvsFlow:
        new = super().with_options(**kwargs)
        new.__class__ = AvsFlow
        return new

    def _bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        import inspect

        try:
            return dict(inspect.signature(self.fn).bind_partial(*args, **kwargs).arguments)
        except TypeError:
            return dict(kwargs)  # Prefect reports the bad call itself


def avs_flow(**flow_kwargs: Any) -> Callable[[Callable[..., Any]], AvsFlow]:
    """@flow for this project's flows: ``@avs_flow(name="preprocess")``."""
    def decorate(fn: Callable[..., Any]) -> AvsFlow:
        return AvsFlow(fn, **flow_kwargs)
    return decorate


def root_cause(exc: BaseException) -> BaseException:
    """The error a user must read, out of the wrappers a run puts around it: Ray's task and actor
    errors (``.cause``), Ray Train's worker-group errors (the first failed worker's error) and
    Python's ``raise ... from`` chains."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        failures = getattr(exc, "worker_failures", None)  # ray.train WorkerGroupError / TrainingFailedError
        if isinstance(failures, dict) and failures:
            exc = next(iter(failures.values()))
            continue
        inner = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError and relatives
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if exc.__cause__ is not None:
            exc = exc.__cause__
            continue
        break
    return exc


def describe(exc: BaseException) -> str:
    """``Type: message``, the message's first line: Ray appends its own advice after it, and a
    Ray error's text starts with the remote traceback (then its last exception line is taken)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    if lines and lines[0].startswith(("ray::", "Traceback")):  # Ray's remote traceback text, not a message
        tail = [ln for ln in lines if not ln.startswith((" ", "Traceback", "ray::"))]
        lines = tail[-1:] if tail else lines[-1:]
    return f"{type(exc).__name__}: {lines[0] if lines else repr(exc)}"


class _PrefectConsole(WithoutTracebacks):
    """Prefect's console lines without tracebacks (the flow run's log in Prefect, the API handler,
    keeps them). Prefect's lines that repeat a failure's cause as it travels from task run to flow
    run are shortened: main() prints the cause once, at the end."""

    REPEATS = {"Task run failed with exception": "task run failed (the cause is at the end of the run)",
               "Encountered exception during execution": "failed (the cause is at the end of the run)",
               "Finished in state Failed(": "Finished in state Failed"}


def _console_without_tracebacks() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                          if isinstance(v, logging.Logger))]:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, WithoutTracebacks):
                handler.setFormatter(_PrefectConsole(handler.formatter))


def main(flow: AvsFlow, show: Callable[[Any], str] | None = None, **kwargs: Any) -> None:
    """``python -m flows.<name> override ...``: run the flow, print its result (as JSON, or as
    ``show(result)`` says); a refused or bad config is one line on stderr and exit status 2.

    A run that fails ends with its cause, once: the console shows log records without their
    tracebacks, and the last lines name the error (unwrapped from Ray's and Prefect's wrappers)
    and a file with the full traceback; the flow run's log in Prefect keeps the tracebacks too.
    """
    from prefect.logging.configuration import setup_logging

    setup_logging()  # Prefect's handlers exist now (idempotent), so that the console's can be changed
    _console_without_tracebacks()
    try:
        result = flow(overrides=sys.argv[1:], **kwargs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - the run's end: say the cause once, keep the traceback in a file
        path = os.path.join(tempfile.gettempdir(), f"avs-{flow.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt")
        with open(path, "w") as f:
            f.write("".join(traceback.format_exception(e)))
        print(f"\n{flow.name} failed: {describe(root_cause(e))}\n(full traceback: {path})", file=sys.stderr)
        sys.exit(1)
    print(show(result) if show else json.dumps(result, indent=2, default=str))
