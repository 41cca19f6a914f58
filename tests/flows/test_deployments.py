"""prefect.yaml, for real: validated strictly (``prefect deploy`` only warns on a file it cannot
read, and Prefect's own model of the file ignores unknown keys), then deployed to a real local
Prefect server with a process work pool, and run by a worker as the README says."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import typing
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from prefect_env import REPO, TINY, rows, service_errors, user_env
from pydantic import BaseModel

PREFECT_YAML = REPO / "prefect.yaml"


def _models_in(annotation: typing.Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (Optional[X], list[X], Union[int, X] ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def unknown_keys(data: typing.Any, model: type[BaseModel], where: str = "") -> list[str]:
    """Every key of ``data`` that ``model`` (recursively) does not know: 'deployments[2].paramters'."""
    if isinstance(data, list):
        return [k for i, item in enumerate(data) for k in unknown_keys(item, model, f"{where}[{i}]")]
    if not isinstance(data, dict):
        return []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    fields.update({name: f for name, f in model.model_fields.items()})
    found = []
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            found.append(path)
            continue
        for sub in _models_in(fields[key].annotation):
            found += unknown_keys(value, sub, path)
    return found


def strict_validate(raw: dict) -> typing.Any:
    """What `prefect deploy` reads, plus: no key it would ignore."""
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(raw)
    unknown = unknown_keys(raw, PrefectYamlModel)
    if unknown:
        raise ValueError(f"prefect.yaml: keys Prefect does not know (it would ignore them): {unknown}")
    return model


def _project_flow_files() -> set[str]:
    return {f"flows/{p.name}" for p in (REPO / "flows").glob("*.py") if re.search(r"^@avs_flow\(", p.read_text(), re.MULTILINE)}


def test_prefect_yaml_is_valid_strictly_and_deploys_every_flow():
    raw = yaml.safe_load(PREFECT_YAML.read_text())
    model = strict_validate(raw)
    by_name = {d.name: d for d in model.deployments}
    assert len(by_name) == len(model.deployments)
    assert {d.entrypoint.split(":")[0] for d in model.deployments} == _project_flow_files()
    assert {d.work_pool.name for d in model.deployments} == {"avs-process"}
    nightly = by_name["pipeline-nightly"]
    assert nightly.entrypoint == "flows/pipeline.py:pipeline"
    # its state is the server's (a re-deploy keeps it), off when first deployed; the slug keeps its id
    assert [(s.cron, s.timezone, s.slug, s.active) for s in nightly.schedules] == [
        ("0 2 * * *", "UTC", "nightly", "{{ nightly-state.active }}")]
    assert nightly.build == [{"infra.deploy_steps.schedule_state": {
        "id": "nightly-state", "deployment": "pipeline/pipeline-nightly", "slug": "nightly", "default": False}}]
    assert all(isinstance(d.parameters.get("overrides"), list) for d in model.deployments)


@pytest.mark.parametrize("breakage, named", [
    (lambda raw: raw["deployments"][0].update(paramters={"overrides": []}), "deployments[0].paramters"),
    (lambda raw: raw["deployments"][0]["work_pool"].update(nmae="x"), "deployments[0].work_pool.nmae"),
    (lambda raw: raw.update(deploymnets=[]), "deploymnets"),
])
def test_a_broken_prefect_yaml_fails_naming_the_key(breakage, named):
    raw = yaml.safe_load(PREFECT_YAML.read_text())
    breakage(raw)
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        strict_validate(raw)


def test_a_broken_schedule_fails_as_prefect_deploy_reads_it():
    raw = yaml.safe_load(PREFECT_YAML.read_text())
    nightly = next(d for d in raw["deployments"] if d["name"] == "pipeline-nightly")
    nightly["schedules"][0]["crn"] = nightly["schedules"][0].pop("cron")  # Prefect's schedule model forbids extras
    with pytest.raises(Exception, match="crn"):
        strict_validate(raw)


def _flow_run_states(db: Path) -> dict[str, str]:
    """deployment name -> state type of its (one) flow run."""
    return dict(rows(db, "SELECT d.name, r.state_type FROM flow_run r JOIN deployment d ON r.deployment_id = d.id"))


@pytest.mark.slow
def test_deployments_run_train_combo_and_the_pipeline_and_a_bad_override_fails_at_once(
        prefect_home, prefect_server, ray_tmp, tmp_path):
    api, _ = prefect_server
    env = user_env(prefect_home, PREFECT_API_URL=api, AVS_PROJECT_DIR=str(REPO), RAY_TMPDIR=str(ray_tmp))

    def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    cli("work-pool", "create", "avs-process", "--type", "process")
    cli("--no-prompt", "deploy", "--all")
    db = prefect_home / "prefect.db"
    deployed = {name for (name,) in rows(db, "SELECT name FROM deployment")}
    assert {d["name"] for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]} == deployed

    where = [f"data.uri={tmp_path}/synth", f"preprocess.output={tmp_path}/datasets", f"output={tmp_path}/out"]
    train = [*TINY, *where, "train.epochs=1", "train.loader.image_size=64", "train.loader.batch_size=2"]
    cli("deployment", "run", "train_combo/train-combo", "--params", json.dumps({"overrides": train}))
    cli("deployment", "run", "evaluate/evaluate", "--params", json.dumps({"overrides": ["evaluate.splt=test"]}))
    cli("worker", "start", "--pool", "avs-process", "--run-once", timeout=500)
    cli("deployment", "run", "pipeline/pipeline", "--params", json.dumps({"overrides": [*TINY, *where, "train.epochs=1"]}))
    cli("worker", "start", "--pool", "avs-process", "--run-once", timeout=500)

    assert _flow_run_states(db) == {"train-combo": "COMPLETED", "evaluate": "FAILED", "pipeline": "COMPLETED"}
    # The bad override failed at once, naming the key, before any task ran.
    bad_run = rows(db, "SELECT r.id FROM flow_run r JOIN deployment d ON r.deployment_id = d.id WHERE d.name = 'evaluate'")
    (run_id,) = bad_run[0]
    messages = [m for (m,) in rows(db, "SELECT message FROM log WHERE flow_run_id = ?", (run_id,))]
    assert any("evaluate.splt" in m for m in messages), messages[-5:]
    assert rows(db, "SELECT count(*) FROM task_run WHERE flow_run_id = ?", (run_id,)) == [(0,)]
    # The good runs wrote what they say.
    reports = list((tmp_path / "out" / "evaluations").rglob("metrics.json"))
    assert len(reports) == 2  # train_combo's report and the pipeline's
    assert list((tmp_path / "out" / "runs").glob("*/summary.json"))



def test_service_errors_finds_the_schedulers_failure_and_nothing_in_a_clean_log():
    failing = """\
14:52:06.666 | ERROR   | docket.dependencies - ↩ [    74ms] schedule_deployments(){schedule_deployments}
Traceback (most recent call last):
  File ".../docket/worker.py", line 1134, in _execute
sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; please supply a bulk_dml decorated function
15:01:02.000 | ERROR   | prefect.server.services.scheduler - Unexpected error in: ..."""
    found = service_errors(failing)
    assert len(found) == 3 and "schedule_deployments" in found[0] and "Unexpected error in" in found[2]
    clean = """\
 ___ ___ ___ ___ ___ ___ _____
Configure Prefect to communicate with the server with:
INFO:     Uvicorn running on http://127.0.0.1:4200 (Press CTRL+C to quit)
14:52:01.123 | INFO    | prefect.server - scheduler loop: 0 runs"""
    assert service_errors(clean) == []


def _nightly_commands() -> dict[str, str]:
    """README's lines for the nightly, as written, by what they do: lookup (the schedule's id), on,
    runs (its next runs), off; `.venv/bin/` read as the folder of this test's Python."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- nightly-commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    venv_bin = f"{Path(sys.executable).parent}/"
    lines = [line.replace(".venv/bin/", venv_bin) for line in block.strip().splitlines()]
    found = {"lookup": [x for x in lines if x.startswith("NIGHTLY=$(")], "on": [x for x in lines if "# on" in x],
             "runs": [x for x in lines if "# its next runs" in x], "off": [x for x in lines if "# off" in x]}
    assert all(len(v) == 1 for v in found.values()), f"README's nightly block: {lines}"
    return {k: v[0] for k, v in found.items()}


def _api(api: str, method: str, path: str, body: dict | None = None) -> typing.Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{api}{path}", data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def _nightly_runs(db: Path, state: str = "SCHEDULED") -> list[tuple[str, str]]:
    """(id, expected start) of the nightly's runs in a state, earliest first."""
    return rows(db, "SELECT r.id, r.expected_start_time FROM flow_run r JOIN deployment d ON r.deployment_id = d.id "
                    "WHERE d.name = 'pipeline-nightly' AND r.state_type = ? ORDER BY r.expected_start_time", (state,))


def _wait_for(what: str, get, timeout: float = 60.0):
    deadline = time.time() + timeout
    while not (found := get()):
        assert time.time() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(1)
    return found


@pytest.mark.slow
def test_the_nightly_turned_on_as_readme_says_is_scheduled_survives_a_redeploy_and_a_worker_runs_it(
        prefect_home, prefect_server, ray_tmp, tmp_path):
    api, _ = prefect_server
    env = user_env(prefect_home, PREFECT_API_URL=api, AVS_PROJECT_DIR=str(REPO), RAY_TMPDIR=str(ray_tmp), COLUMNS="200")
    readme = _nightly_commands()

    def cli(*args: str, timeout: int = 300) -> str:
        done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def shell(*lines: str) -> str:
        done = subprocess.run(["bash", "-ec", "\n".join(lines)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{lines}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def schedules() -> list[tuple[str, str, bool]]:
        out = json.loads(cli("deployment", "schedule", "ls", "pipeline/pipeline-nightly", "-o", "json"))
        return [(s["id"], s["slug"], s["active"]) for s in out]

    cli("work-pool", "create", "avs-process", "--type", "process")
    assert "pipeline/pipeline-nightly schedule nightly: off (new)" in cli("--no-prompt", "deploy", "--name", "pipeline-nightly")
    db = prefect_home / "prefect.db"
    ((schedule_id, slug, active),) = schedules()
    assert (slug, active) == ("nightly", False)
    time.sleep(5)  # two scheduler loops: nothing is scheduled while the nightly is off
    assert _nightly_runs(db) == []

    # On, as README says: the scheduler makes the coming nights' runs, at 02:00 UTC.
    shell(readme["lookup"], readme["on"])
    assert schedules() == [(schedule_id, "nightly", True)]
    runs = _wait_for("the scheduler's runs of the nightly", lambda: _nightly_runs(db))
    starts = [datetime.fromisoformat(t.replace(" ", "T")).astimezone(timezone.utc) for _, t in runs]
    assert len(runs) >= 3 and all((t.hour, t.minute) == (2, 0) for t in starts), starts
    print(f"scheduled runs of the nightly: {[(r, t.isoformat()) for (r, _), t in zip(runs, starts)]}")
    listed = shell(readme["runs"])
    assert sum(run_id in listed for run_id, _ in runs) == len(runs), listed

    # A re-deploy keeps it on, under the same id; its coming runs are made again.
    assert "schedule nightly: on (as it is on the server)" in cli("--no-prompt", "deploy", "--name", "pipeline-nightly")
    assert schedules() == [(schedule_id, "nightly", True)]
    runs = _wait_for("the nightly's runs after the re-deploy", lambda: _nightly_runs(db))

    # The first of the scheduler's runs, moved to now on a tiny config, is picked up by a worker and completes.
    run_id = runs[0][0]
    where = [f"data.uri={tmp_path}/synth", f"preprocess.output={tmp_path}/datasets", f"output={tmp_path}/out"]
    _api(api, "PATCH", f"/flow_runs/{run_id}", {"parameters": {"overrides": [*TINY, *where, "train.epochs=1"]}})
    due = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    _api(api, "POST", f"/flow_runs/{run_id}/set_state",
         {"state": {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": due}}, "force": True})
    time.sleep(2)
    cli("worker", "start", "--pool", "avs-process", "--run-once", timeout=500)
    assert _nightly_runs(db, "COMPLETED") and _nightly_runs(db, "COMPLETED")[0][0] == run_id
    made_by = rows(db, "SELECT auto_scheduled, created_by FROM flow_run WHERE id = ?", (run_id,))[0]
    assert made_by[0] and schedule_id in made_by[1]  # the scheduler made it, from the nightly's schedule
    assert list((tmp_path / "out" / "runs").glob("*/summary.json"))
    print(f"completed by the worker: {run_id}")

    # Off, as README says; a re-deploy keeps it off.
    shell(readme["lookup"], readme["off"])
    assert schedules() == [(schedule_id, "nightly", False)]
    assert "schedule nightly: off (as it is on the server)" in cli("--no-prompt", "deploy", "--name", "pipeline-nightly")
    assert schedules() == [(schedule_id, "nightly", False)]
