"""prefect.yaml, for real: validated strictly (``prefect deploy`` only warns on a file it cannot
read, and Prefect's own model of the file ignores unknown keys), then deployed to a real local
Prefect server with a process work pool, and run by a worker as the README says."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from prefect_env import REPO, TINY, rows, user_env
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
    assert [(s.cron, s.active) for s in nightly.schedules] == [("0 2 * * *", False)]  # on only when a user turns it on
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

