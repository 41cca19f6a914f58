"""Steps that ``prefect deploy`` runs from prefect.yaml (a deployment's ``build`` section).

``prefect deploy`` applies a deployment's schedules as prefect.yaml states them, ``active``
included: with ``active: false`` written there, every re-deploy would turn off a nightly that a
user had turned on (and, without a slug, give it a new id). The nightly's ``active`` is instead
the output of :func:`schedule_state`, which asks the server how the schedule stands now: a
first deploy creates it off, a re-deploy keeps it on or off as the user left it.
"""
from __future__ import annotations

def schedule_state(deployment: str, slug: str, default: bool = False) -> dict[str, bool]:
    """``{"active": ...}``: whether the schedule ``slug`` of ``deployment`` ("flow/deployment")
    is on at the server ``prefect deploy`` talks to; ``default`` when the deployment or the
    schedule does not exist yet. A deployment made before its schedule had a slug, with one
    schedule, gives that schedule's state."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            schedules = client.read_deployment_by_name(deployment).schedules or []
        except ObjectNotFound:
            schedules = []
    found = [s for s in schedules if s.slug == slug]
    if not found and len(schedules) == 1 and schedules[0].slug is None:
        found = schedules
    active = bool(found[0].active) if found else bool(default)
    print(f"   {deployment} schedule {slug}: {'on' if active else 'off'} ({'as it is on the server' if found else 'new'})")
    return {"active": active}
