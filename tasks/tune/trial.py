"""One trial of a tune run: a Ray Tune function trainable that trains the sampled point with Ray
Train, and that ends its Ray Train run itself when Tune stops it.

The run. :func:`run_trial` is Ray's Train V2 pattern (ray 2.60): it builds the trial's config
(``tasks.tune.space.trial_config``) and calls ``tasks.train.run.run_training``, the code of any
training run, checks included, with two more ``ray.train.UserCallback``s on the Train controller:

- :class:`TrainControllerHandle`: hands the controller's actor handle to the trial, once;
- ``ray.tune.integration.ray_train.TuneReportCallback``: after every ``ray.train.report``, rank
  0's metrics, with the persisted checkpoint's path as ``checkpoint_path``, go on the trial's Tune
  session queue, which the trial actor reports to Tune as ``ray.tune.report`` does: one Tune
  result per epoch.

Stopping. When ASHA stops a trial (and when the search ends), Tune calls the trainable's
``cleanup`` and then ends its actor; the Train controller and workers, owned by it, end too. But
not the workers' placement group: Ray Train frees it when its controller exits, or, when the
controller dies, by a detached ``PlacementGroupCleaner`` that polls the Ray state API, which needs
Ray's dashboard, which this project does not install (``ray[default]``). So a stopped trial would
keep its workers' CPUs (and GPUs) reserved until the driver exits, and the next trials would wait
for them forever (seen with ray 2.60 on the 2-CPU test Ray). :class:`AbortTrainRunOnStop` (a mixin
of the trial's ``FunctionTrainable``, through ``wrap_function``'s ``__mixins__``) aborts the run
in ``cleanup`` first: ``TrainController.abort`` shuts the workers down, removes their placement
group and stops the cleaner. The epoch's checkpoint is in place by then: the callbacks run after
it was persisted.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import ray
from ray import tune
from ray.train import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.queue import Empty, Queue

from infra.config import Config
from infra.schema.tune import SEARCH_KEYS
from infra.storage import Storage
from tasks.train.run import run_training
from tasks.tune.space import trial_config

log = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 120  # the controller stops the workers and removes their placement group

# This trial process's Ray Train run: the queue its controller's handle arrives on, and whether
# Tune is stopping the trial (one trial per actor process: Tune's reuse_actors is off).
_run: dict[str, Any] = {}


class TrainControllerHandle(UserCallback):
    """On the Ray Train controller: puts the controller's own actor handle on the trial's queue at
    the first report, before TuneReportCallback hands that report to Tune (so before ASHA can
    decide on it: callbacks run in list order, Queue.put returns once the item is in)."""

    def __init__(self, queue: Queue):
        self.queue = queue
        self.sent = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not self.sent:
            self.queue.put(ray.get_runtime_context().current_actor)
            self.sent = True


class AbortTrainRunOnStop:
    """Mixin of the trial's FunctionTrainable: abort the Ray Train run before Tune ends the trial."""

    def cleanup(self) -> None:
        abort_train_run()
        super().cleanup()


def abort_train_run() -> None:
    """Abort this process's Ray Train run, if it is still going (see the module docstring)."""
    if not _run:
        return
    _run["stopping"] = True
    try:
        controller = _run["handles"].get_nowait()
    except Empty:
        return  # no report yet: nothing Tune could have stopped it for
    try:
        ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except ray.exceptions.RayActorError:
        pass  # abort ends the controller's actor: expected, as is a run that had ended already
    except ray.exceptions.GetTimeoutError:
        log.warning("the trial's Ray Train run did not abort within %d s", ABORT_TIMEOUT_S)
    with contextlib.suppress(Exception):
        _run["handles"].shutdown()


def run_trial(point: dict[str, Any], cfg: Config, storage: Storage, dataset_url: str, train_root: str) -> None:
    """One trial, in its Ray Tune actor: the Ray Train run of cfg with the sampled point, named by
    the trial id, under train_root."""
    trial_id = tune.get_context().get_trial_id()
    trial_cfg = trial_config(cfg, {k: v for k, v in point.items() if k in SEARCH_KEYS}, trial_id, train_root)
    handles = Queue(maxsize=1, actor_options={"num_cpus": 0})
    _run.update(handles=handles, stopping=False)
    try:
        run_training(trial_cfg, storage, dataset_url, logging.getLogger(f"{__name__}.{trial_id}"),
                     callbacks=[TrainControllerHandle(handles), TuneReportCallback()])
    except Exception:
        if _run.get("stopping"):  # Tune stopped the trial and cleanup aborted the run: no error
            return
        raise


run_trial.__mixins__ = (AbortTrainRunOnStop,)  # read by ray.tune's wrap_function, kept by with_parameters
