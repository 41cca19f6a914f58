"""What every flow shares: the `overrides` parameter type and a Flow that refuses credentials
before Prefect records anything.

Prefect stores a flow run's parameters (here: the Hydra override strings) in its database
when it creates the run, before the flow body runs; for a deployment, the server stores
them when the run is requested. So an override carrying a credential (``storage.secret=...``)
is refused at both doors, never only inside the flow body:

- a direct call (``python -m flows.x ...``, ``preprocess([...])`` in Python, a subflow):
  :class:`AvsFlow` checks the overrides in ``__call__``, before the flow run is created;
- a deployment run (``prefect deployment run ... --param``, the UI, ``run_deployment``): the
  flow's parameter schema gives every override the pattern
  :data:`infra.config.NO_CREDENTIALS_PATTERN`, which the Prefect server enforces (deployments
  enforce their parameter schema by default) before it stores the run.

The flow body composes the config with :func:`infra.config.compose`, which refuses them once
more. Credentials reach a flow through the environment, a Prefect Secret block named by
``storage.secret_block``, or the work pool's job variables (see infra/schema/storage.py).
"""
from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any

from prefect._internal.concurrency.services import _QueueServiceBase
from prefect.flows import Flow
from pydantic import Field

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

# One Hydra override string. The pattern is for the Prefect server (and UI) only: Python-side
# validation runs after the run is recorded, and Prefect would log the refused value.
Override = Annotated[str, Field(
    json_schema_extra={"pattern": NO_CREDENTIALS_PATTERN},
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


def main(flow: AvsFlow, **kwargs: Any) -> None:
    """``python -m flows.<name> override ...``: run the flow, print its result as JSON; a refused
    or bad config is one line on stderr and exit status 2."""
    try:
        result = flow(overrides=sys.argv[1:], **kwargs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=2, default=str))
