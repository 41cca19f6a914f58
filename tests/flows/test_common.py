"""What every flow shares: processes forked from a process that ran a flow exit cleanly."""
from __future__ import annotations

import multiprocessing

import torch
from prefect import get_run_logger

from flows.common import avs_flow


@avs_flow(name="fork-check")
def _tiny_flow(overrides: list[str] | None = None) -> int:
    get_run_logger().info("a log line, so that Prefect's log service runs")
    return 1


class _Numbers(torch.utils.data.IterableDataset):
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        yield from range(info.id, 8, info.num_workers)


def _child() -> None:
    print("child ran", flush=True)


def test_forked_children_of_a_flow_process_exit_cleanly():
    """Prefect 3.8.8 leaves its services' exit hooks in forked children, which then exit with
    status 1: DataLoader workers 'exited unexpectedly'. flows.common drops them after fork."""
    assert _tiny_flow() == 1
    child = multiprocessing.get_context("fork").Process(target=_child)
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    loader = torch.utils.data.DataLoader(_Numbers(), batch_size=2, num_workers=2)
    assert sorted(int(x) for batch in loader for x in batch) == list(range(8))
