"""Secrets stay out of Prefect: credentials reach flows through the environment or a Secret block,
never as flow parameters; a credential override is refused before Prefect records anything.

The flows run as a user runs them, in processes of their own with PREFECT_HOME in a temporary
folder: ``python -m flows.<name> ...`` on the ephemeral Prefect API, and prefect.yaml deployed to
a real local Prefect server and run by a process worker. Prefect keeps its whole database there
(``prefect.db``), which the tests read table by table, column by column, and byte by byte,
together with every log record (Prefect logs at DEBUG), persisted results, Ray's session logs
and the processes' stdout/stderr. Each test first checks that the run really happened (flow and
task runs completed, objects written to the S3 test server with the credentials under test),
so that an empty scan cannot pass for a clean one.
"""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from prefect_env import REPO, TINY, flow_runs, rows, run_python, user_env

def _distinct(tag: str) -> str:
    return f"avs-{tag}-{uuid.uuid4().hex}"  # found nowhere by chance


def _db_hits(db: Path, needles: list[str]) -> list[str]:
    """'table.column: needle' for every cell of every table of Prefect's database holding a needle."""
    hits = []
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            cur = con.execute(f'SELECT * FROM "{table}"')
            cols = [d[0] for d in cur.description]
            for row in cur:
                for col, value in zip(cols, row):
                    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    hits += [f"{table}.{col}: {n}" for n in needles if n in text]
    finally:
        con.close()
    return hits


def _file_hits(root: Path, needles: list[str]) -> list[str]:
    """Files under root whose raw bytes hold a needle (the database file and its WAL included:
    this also sees rows since deleted)."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {n}" for n in needles if n.encode() in data]
    return hits


def _assert_no_secret_anywhere(home: Path, proc: subprocess.CompletedProcess, secrets: list[str], ray_dir: Path) -> None:
    db = home / "prefect.db"
    assert _db_hits(db, secrets) == []
    assert _file_hits(home, secrets) == []  # the database file byte by byte, its WAL, anything else Prefect wrote
    ray_logs = [p for p in ray_dir.rglob("*") if p.is_file() and p.parent.name == "logs"]
    assert ray_logs, "Ray wrote no logs where the scan looks"
    assert _file_hits(ray_dir, secrets) == [], "a credential in Ray's session folder (its logs)"
    for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert not [s for s in secrets if s in stream], f"a credential in the run's {name}"


def _reader(s3_server, key: str, secret: str):
    from infra.schema.storage import StorageConfig
    from infra.storage import Storage

    return Storage(StorageConfig(endpoint_url=s3_server, region="us-east-1", key=key, secret=secret, retries=2))


@pytest.mark.slow
def test_pipeline_with_environment_credentials_leaves_no_secret_in_prefect(prefect_home, ray_tmp, s3_server, s3_bucket):
    key, secret, token = _distinct("key"), _distinct("secret"), _distinct("token")
    bucket = f"s3://{s3_bucket}"
    env = user_env(prefect_home, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_SESSION_TOKEN=token,
               AWS_ENDPOINT_URL=s3_server, AWS_DEFAULT_REGION="us-east-1", RAY_TMPDIR=str(ray_tmp),
               PREFECT_RESULTS_PERSIST_BY_DEFAULT="true")  # task and flow results written under PREFECT_HOME too
    args = [*TINY, "storage=s3", f"data.uri={bucket}/synth", f"preprocess.output={bucket}/datasets", f"output={bucket}/out",
            "train.epochs=1"]
    proc = run_python(["-m", "flows.pipeline", *args], env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # The run happened, against the S3 server, with the environment's credentials (botocore has no others here).
    s3 = _reader(s3_server, key, secret)
    written = s3.glob(f"{bucket}/out/runs/*/summary.json")
    assert len(written) == 1 and written[0] in proc.stdout  # the run ends by saying where it is
    assert "Pipeline done in" in proc.stdout and "overlays" in proc.stdout
    # Ray's own lines stay in its log files: the console has ours
    for noise in ("Token authentication is enabled", "core_worker.cc", "logging_progress", "PlacementGroupCleaner",
                  "Traceback", "RayTrainWorker", "streaming_executor"):
        assert noise not in proc.stdout + proc.stderr, noise
    summary = json.loads(s3.read_text(written[0]))
    assert summary["preprocess"]["samples"] == 4 and summary["preprocess"]["dataset_url"].startswith(bucket)
    assert s3.exists(f"{summary['preprocess']['dataset_url']}/manifest.json")
    assert summary["train"]["checkpoint"].startswith(f"{bucket}/out/train/") and summary["report"]["dir"].startswith(bucket)
    assert s3.exists(summary["report"]["paths"]["metrics"])
    db = prefect_home / "prefect.db"
    assert flow_runs(db) == [("pipeline", "COMPLETED")]
    tasks = {name.rsplit("-", 1)[0]: state for name, state in rows(db, "SELECT name, state_type FROM task_run")}
    assert {t: tasks.get(t) for t in ("synthavs", "build-shards", "train", "evaluate-checkpoint")} == dict.fromkeys(
        ("synthavs", "build-shards", "train", "evaluate-checkpoint"), "COMPLETED")
    logs = [m for (m,) in rows(db, "SELECT message FROM log")]
    assert any(m.startswith("preprocess: ") for m in logs) and len(logs) > 20  # the run's log records are there ...
    assert any("storage=s3" in h for h in _db_hits(db, ["storage=s3"]))  # ... and the scan sees the parameters
    assert [p for p in (prefect_home / "storage").rglob("*") if p.is_file()]  # persisted results, scanned below

    _assert_no_secret_anywhere(prefect_home, proc, [key, secret, token], ray_tmp)


@pytest.mark.slow
def test_synth_with_a_secret_block_leaves_no_secret_in_prefect(prefect_home, ray_tmp, s3_server, s3_bucket):
    key, secret = _distinct("blockkey"), _distinct("blocksecret")
    env = user_env(prefect_home, RAY_TMPDIR=str(ray_tmp))  # no AWS credentials in the environment at all
    save = ("import sys\nfrom prefect.blocks.system import Secret\n"
            "Secret(value={'key': sys.argv[1], 'secret': sys.argv[2]}).save('avs-test-s3')\n")
    made = run_python(["-c", save, key, secret], env, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]

    bucket = f"s3://{s3_bucket}"
    args = [*TINY, "storage=s3", "storage.secret_block=avs-test-s3", f"storage.endpoint_url={s3_server}",
            f"data.uri={bucket}/synth"]
    proc = run_python(["-m", "flows.synth", *args], env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["generated"] and result["root"].startswith(bucket)
    assert _reader(s3_server, key, secret).walk_files(result["root"])  # written with the block's credentials
    db = prefect_home / "prefect.db"
    assert flow_runs(db) == [("synthavs", "COMPLETED")]
    assert rows(db, "SELECT name FROM block_document WHERE name = 'avs-test-s3'")  # kept by Prefect, encrypted
    assert any("avs-test-s3" in h for h in _db_hits(db, ["avs-test-s3"]))

    _assert_no_secret_anywhere(prefect_home, proc, [key, secret], ray_tmp)
    assert made.stdout.count(secret) == made.stderr.count(secret) == 0


@pytest.mark.slow
def test_a_credential_override_is_refused_and_nothing_is_recorded(prefect_home):
    secret = _distinct("override")
    env = user_env(prefect_home)
    proc = run_python(["-m", "flows.preprocess", "data=synth_easy", f"storage.secret={secret}"], env, timeout=120)
    assert proc.returncode == 2
    assert "refused override storage.secret" in proc.stderr
    assert "AWS_SECRET_ACCESS_KEY" in proc.stderr and "storage.secret_block=<block name>" in proc.stderr
    assert secret not in proc.stdout and secret not in proc.stderr
    assert _file_hits(prefect_home, [secret]) == []
    db = prefect_home / "prefect.db"
    assert not db.exists() or rows(db, "SELECT count(*) FROM flow_run") == [(0,)]  # refused before any flow run


@pytest.mark.slow
def test_deployments_take_credentials_from_the_work_pool_and_refuse_them_as_parameters(
        prefect_home, prefect_server, ray_tmp, s3_server, s3_bucket):
    """prefect.yaml deployed as the README says, credentials in a Secret block that the work pool's
    job variables reference (infra/prefect/avs-process-pool.json), a process worker runs the flow."""
    api, server_log = prefect_server
    key, secret, refused = _distinct("poolkey"), _distinct("poolsecret"), _distinct("refused")
    env = user_env(prefect_home, PREFECT_API_URL=api, AVS_PROJECT_DIR=str(REPO), RAY_TMPDIR=str(ray_tmp))
    prefect = [sys.executable, "-m", "prefect"]

    def cli(*args: str, timeout: int = 200) -> subprocess.CompletedProcess:
        return subprocess.run([*prefect, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    save = ("import sys\nfrom prefect.blocks.system import Secret\n"
            "Secret(value={'key': sys.argv[1], 'secret': sys.argv[2]}).save('avs-s3')\n")
    steps = [run_python(["-c", save, key, secret], env, timeout=120),
             cli("work-pool", "create", "avs-process", "--type", "process", "--base-job-template",
                 str(REPO / "infra" / "prefect" / "avs-process-pool.json")),
             cli("--no-prompt", "deploy", "--all")]
    for step in steps:
        assert step.returncode == 0, step.stdout[-2000:] + step.stderr[-2000:]

    # A credential as a parameter: the server refuses the run before storing it.
    bad = cli("deployment", "run", "synthavs/synthavs", "--params", json.dumps({"overrides": [f"storage.secret={refused}"]}))
    said = " ".join((bad.stdout + bad.stderr).split())  # the CLI wraps lines
    assert bad.returncode != 0 and "Validation failed for field 'overrides[0]'" in said
    assert "an override without credentials" in said and "storage.secret_block=<block name>" in said, said
    assert refused not in bad.stdout + bad.stderr and "(?!" not in said  # neither the value nor the regex

    bucket = f"s3://{s3_bucket}"
    overrides = [*TINY, "storage=s3", f"storage.endpoint_url={s3_server}", f"data.uri={bucket}/synth"]
    ok = cli("deployment", "run", "synthavs/synthavs", "--params", json.dumps({"overrides": overrides, "settings": ["s4"]}))
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    worker = cli("worker", "start", "--pool", "avs-process", "--run-once", timeout=400)  # no AWS credentials here
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    db = prefect_home / "prefect.db"
    assert flow_runs(db) == [("synthavs", "COMPLETED")], worker.stdout[-3000:] + worker.stderr[-3000:]
    assert _reader(s3_server, key, secret).glob(f"{bucket}/synth/*/synthavs.json")  # written with the pool's credentials
    template = rows(db, "SELECT base_job_template FROM work_pool WHERE name = 'avs-process'")[0][0]
    assert "{{ prefect.blocks.secret.avs-s3.secret }}" in template  # the server keeps the reference only

    _assert_no_secret_anywhere(prefect_home, worker, [key, secret, refused], ray_tmp)
    assert _file_hits(server_log.parent, [key, secret, refused]) == []  # the server's own log among them
    for proc in steps[1:] + [ok]:
        assert key not in proc.stdout + proc.stderr and secret not in proc.stdout + proc.stderr


# -- without a Prefect server: the guard, the parameter schema, prefect.yaml ------------------------

def _project_flows():
    import importlib

    from prefect.flows import Flow

    found = {}
    for path in sorted((REPO / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{path.stem}")
        found.update({f"{path.stem}.{n}": v for n, v in vars(module).items()
                      if isinstance(v, Flow) and v.fn.__module__ == module.__name__})
    return found


def test_every_flow_refuses_credential_overrides_before_a_flow_run_exists(monkeypatch):
    import prefect.flow_engine

    from flows.common import AvsFlow
    from infra.config import ConfigError

    def no_run(*a, **k):
        raise AssertionError("a flow run was started")

    monkeypatch.setattr(prefect.flow_engine, "run_flow", no_run)
    flows = _project_flows()
    assert {"pipeline.pipeline", "preprocess.preprocess", "synth.synth"} <= set(flows)
    for name, flow in flows.items():
        assert isinstance(flow, AvsFlow), f"{name}: declare it with flows.common.avs_flow"
        for call in (lambda: flow(overrides=["data=synth_easy", "storage.secret=guard-s3cr3t"]),
                     lambda: flow(["+storage.key=guard-s3cr3t"]),
                     lambda: flow.with_options(name="other")(overrides=["storage.token=guard-s3cr3t"])):
            with pytest.raises(ConfigError, match="refused override") as err:
                call()
            assert "guard-s3cr3t" not in str(err.value)


def test_the_servers_parameter_schema_refuses_credential_overrides():
    from prefect.utilities.callables import parameter_schema

    from flows.common import REFUSED_OVERRIDE
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    for flow in _project_flows().values():
        schema = parameter_schema(flow).model_dump()
        validate({"overrides": ["data=synth_easy", "storage=s3", "storage.secret_block=avs-s3"]}, schema,
                 raise_on_error=True)
        for bad in ("storage.secret=s3cr3t", "storage.key=s3cr3t", "++storage.token=s3cr3t",
                    "storage={key: a, secret: s3cr3t}"):
            with pytest.raises(ValidationError) as err:
                validate({"overrides": ["data=synth_easy", bad]}, schema, raise_on_error=True)
            # the server's words: why and what to do, not the value nor the regular expression
            assert "overrides[1]" in str(err.value) and REFUSED_OVERRIDE in str(err.value)
            assert "s3cr3t" not in str(err.value) and "(?!" not in str(err.value)


def test_recorded_parameters_never_hold_credentials():
    from flows.preprocess import preprocess

    recorded = preprocess.serialize_parameters({"overrides": ["data.uri=s3://b/x", "storage.secret=rec-s3cr3t"]})
    assert recorded == {"overrides": ["data.uri=s3://b/x", "storage.secret=***"]}


def test_prefect_yaml_deploys_every_flow_and_holds_no_credentials():
    import yaml
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate
    from prefect.workers.process import ProcessWorker

    from flows.common import AvsFlow

    text = (REPO / "prefect.yaml").read_text()
    raw = yaml.safe_load(text)
    model = PrefectYamlModel.model_validate(raw)  # what `prefect deploy` reads (it only warns on an invalid file)
    assert len({d.name for d in model.deployments}) == len(model.deployments)
    flows_here = {f"flows/{path.name}" for path in (REPO / "flows").glob("*.py")
                  if re.search(r"^@avs_flow\(", path.read_text(), re.MULTILINE)}
    assert {d.entrypoint.split(":")[0] for d in model.deployments} == flows_here  # every flow, deployed
    for dep in model.deployments:
        flow = load_flow_from_entrypoint(str(REPO / dep.entrypoint))
        assert isinstance(flow, AvsFlow)
        validate(dep.parameters, parameter_schema(flow).model_dump(), raise_on_error=True)
    # `prefect deploy` resolves templates in the deployments and stores the values: no credential
    # there, neither given nor referenced (the work pool's template references them instead).
    deployments = yaml.safe_dump(raw["deployments"])
    for word in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "prefect.blocks", "storage.key",
                 "storage.secret=", "storage.token"):
        assert word not in deployments

    template = json.loads((REPO / "infra" / "prefect" / "avs-process-pool.json").read_text())
    WorkPoolCreate(name="avs-process", type="process", base_job_template=template)  # the server accepts it
    env = template["variables"]["properties"]["env"]["default"]
    assert env == {"AWS_ACCESS_KEY_ID": "{{ prefect.blocks.secret.avs-s3.key }}",
                   "AWS_SECRET_ACCESS_KEY": "{{ prefect.blocks.secret.avs-s3.secret }}"}
    default = ProcessWorker.get_default_base_job_template()
    assert template["job_configuration"] == default["job_configuration"]  # only the env default differs
    assert set(template["variables"]["properties"]) == set(default["variables"]["properties"])
    assert "infra/prefect/avs-process-pool.json" in text
