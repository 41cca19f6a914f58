"""The cluster files: the Ray cluster launcher file, the KubeRay RayCluster and the worker image.

- infra/cluster/ray-cluster.yaml goes through Ray's own preparation and validation, the steps
  `ray up` takes before it first calls the cloud; broken copies fail with Ray's own messages.
- infra/cluster/kuberay-raycluster.yaml is validated against the openAPIV3Schema of KubeRay
  v1.7.0's RayCluster CRD (infra/cluster/crd/, source and licence in its README), plus a check of
  unknown fields, which the CRD schema does not reject but `kubectl apply` (strict field
  validation) does.
- infra/docker/Dockerfile: structural facts (base Python = requires-python, COPY sources exist
  and are not .dockerignored, locked install before the project's, editable --no-deps install).
- All three agree with each other and with our config (one image, GPU nodes big enough for
  train=gpu, S3 settings as conf/storage/s3.yaml reads them, credentials only by reference).

Everything here is offline and takes a few seconds.
"""
from __future__ import annotations

import copy
import fnmatch
import gzip
import inspect
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "infra" / "cluster" / "ray-cluster.yaml"
KUBERAY = REPO / "infra" / "cluster" / "kuberay-raycluster.yaml"
CRD_SCHEMA = REPO / "infra" / "cluster" / "crd" / "ray.io_rayclusters-kuberay-v1.7.0.schema.json.gz"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements.lock"
PYPROJECT = REPO / "pyproject.toml"
GPU_WORKER_TYPE = "gpu_worker"  # the launcher's GPU node type
GPU_GROUP = "gpu"  # the RayCluster's GPU worker group


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def train_gpu_cpus_per_worker() -> float:
    from infra.config import compose

    cfg = compose(["train=gpu"])
    assert cfg.train.use_gpu
    return cfg.tune.cpus_per_worker or cfg.train.cpus_per_worker


# -- the Ray cluster launcher file -----------------------------------------------------------

def ray_up_checks(config_file: Path) -> dict:
    """Exactly what `ray up` (ray 2.60: commands.create_or_update_cluster, then _bootstrap_config)
    does with a cluster file before it talks to the cloud; returns the prepared config.

    Left out, both after preparation and both AWS API calls: the provider's
    fillout_available_node_types_resources (asks EC2 for the instance types' CPUs/GPUs; Ray goes on
    with a warning when it fails, and our node types give their resources) and bootstrap_config
    (IAM role, key pair, subnets, security groups). test_ray_up_still_takes_these_steps checks that
    Ray still runs these steps in this order.
    """
    from ray.autoscaler._private.providers import _NODE_PROVIDERS
    from ray.autoscaler._private.util import prepare_config, validate_config

    # create_or_update_cluster: load, refuse an unknown provider, name the cluster.
    config = yaml.safe_load(open(config_file).read())
    importer = _NODE_PROVIDERS.get(config["provider"]["type"])
    if not importer:
        raise ValueError(f"Unknown provider type {config['provider']['type']}")
    config["cluster_name"]  # noqa: B018 (ray up prints it: a KeyError without one)
    # _bootstrap_config: defaults merged, setup commands merged, docker checked, per-type min/max workers.
    config = prepare_config(config)
    importer(config["provider"])  # the provider's class (for aws: imports boto3), no call to AWS
    validate_config(config)  # ray/autoscaler/ray-schema.json (jsonschema), then Ray's own rules
    return config


def test_ray_up_still_takes_these_steps():
    """ray_up_checks mirrors Ray's code; if a Ray upgrade changes the steps, this says so."""
    from ray.autoscaler._private import commands

    up = inspect.getsource(commands.create_or_update_cluster)
    assert up.index("yaml.safe_load") < up.index("_NODE_PROVIDERS.get") < up.index("_bootstrap_config(")
    boot = inspect.getsource(commands._bootstrap_config)
    steps = ["prepare_config(config)", "importer(config[\"provider\"])",
             "provider_cls.fillout_available_node_types_resources(config)", "validate_config(config)",
             "provider_cls.bootstrap_config(config)"]
    positions = [boot.index(step) for step in steps]
    assert positions == sorted(positions), steps


def test_launcher_file_passes_ray_up_validation():
    config = ray_up_checks(LAUNCHER)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["max_workers"] == 0 and "GPU" not in head["resources"]
    gpu = types[GPU_WORKER_TYPE]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 and 1 <= gpu["max_workers"] <= config["max_workers"]
    # Ray's automatic `--runtime=nvidia` is off (our image sets no NVIDIA_VISIBLE_DEVICES): the GPU
    # type must ask Docker for its GPU itself.
    assert config["docker"]["disable_automatic_runtime_detection"] is True
    assert "--gpus all" in gpu["docker"]["worker_run_options"]
    # A Ray Train worker of train=gpu (its CPUs and one GPU) fits one GPU node.
    assert gpu["resources"]["CPU"] >= train_gpu_cpus_per_worker()

    head_start = " ".join(config["head_start_ray_commands"])
    for flag in ("ray start --head", "--port=6379", "--autoscaling-config=~/ray_bootstrap_config.yaml",
                 "--dashboard-host=0.0.0.0"):
        assert flag in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    # The synced repository is what setup installs (editable, no dependency changes).
    [(mount, local)] = config["file_mounts"].items()
    assert local == "." and f"pip install --quiet --no-deps -e {mount}" in config["setup_commands"]


def _broken_launcher(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(LAUNCHER.read_text())
    edit(config)
    path = tmp_path / "ray-cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


@pytest.mark.parametrize("edit, message", [
    (lambda c: _rename(c, "max_workers", "max_worker"),
     "Additional properties are not allowed ('max_worker' was unexpected)"),
    (lambda c: _rename(c["available_node_types"][GPU_WORKER_TYPE], "min_workers", "min_worker"),
     "Additional properties are not allowed ('min_worker' was unexpected)"),
    (lambda c: c["available_node_types"][GPU_WORKER_TYPE].update(gpus=1),
     "Additional properties are not allowed ('gpus' was unexpected)"),
    (lambda c: c["available_node_types"][GPU_WORKER_TYPE]["resources"].update(GPU="1"),
     "'1' is not of type 'integer'"),
    (lambda c: c["docker"].update(run_option=["--ipc=host"]),
     "Additional properties are not allowed ('run_option' was unexpected)"),
], ids=["top-level typo", "node type typo", "node type unknown key", "resource as string", "docker typo"])
def test_broken_launcher_file_fails_with_rays_message(tmp_path, edit, message):
    with pytest.raises(jsonschema.ValidationError) as err:
        ray_up_checks(_broken_launcher(tmp_path, edit))
    assert message in str(err.value)


def test_launcher_head_type_must_exist(tmp_path):
    path = _broken_launcher(tmp_path, lambda c: c.update(head_node_type="head_node"))
    with pytest.raises(ValueError, match="`head_node_type` must be one of `available_node_types`"):
        ray_up_checks(path)


# -- the KubeRay RayCluster -----------------------------------------------------------------

def crd_schema() -> dict:
    return json.loads(gzip.decompress(CRD_SCHEMA.read_bytes()))


# ObjectMeta is validated by Kubernetes itself (the CRD schema has `metadata: {type: object}`);
# the fields a RayCluster manifest of ours may set.
OBJECT_META_FIELDS = {"name", "namespace", "labels", "annotations"}


def unknown_fields(value, schema: dict, path: str) -> list[str]:
    """Keys the schema does not declare, where it declares an object's properties and neither
    allows additional ones nor preserves unknown fields: what the API server prunes, and what
    `kubectl apply` (strict field validation, its default) refuses as 'unknown field'."""
    if isinstance(value, list):
        items = schema.get("items")
        return [e for i, v in enumerate(value) for e in unknown_fields(v, items, f"{path}[{i}]")] if items else []
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props, extra = schema.get("properties"), schema.get("additionalProperties")
    errors = []
    for key, sub in value.items():
        where = f"{path}.{key}" if path else key
        if props is not None and key in props:
            errors += unknown_fields(sub, props[key], where)
        elif isinstance(extra, dict):
            errors += unknown_fields(sub, extra, where)
        elif props is not None and extra is not True:
            errors.append(f"{where}: unknown field {key!r}")
    return errors


def kuberay_problems(manifest: dict) -> list[str]:
    """Schema errors (types, enums, required fields, quantity patterns: jsonschema on the CRD's
    openAPIV3Schema), unknown fields, and the RayCluster's identity."""
    schema = crd_schema()
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in jsonschema.Draft4Validator(schema).iter_errors(manifest)]
    problems += unknown_fields(manifest, schema, "")
    if manifest.get("apiVersion") != "ray.io/v1" or manifest.get("kind") != "RayCluster":
        problems.append(f"apiVersion/kind must be ray.io/v1 RayCluster, got {manifest.get('apiVersion')} "
                        f"{manifest.get('kind')}")
    problems += [f"metadata.{k}: not an ObjectMeta field we use" for k in set(manifest.get("metadata", {}))
                 - OBJECT_META_FIELDS]
    return problems


def kuberay_manifest() -> dict:
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d is not None]
    assert len(docs) == 1
    return docs[0]


def containers(manifest: dict) -> list[dict]:
    spec = manifest["spec"]
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def gpu_group(manifest: dict) -> dict:
    [group] = [g for g in manifest["spec"]["workerGroupSpecs"] if g["groupName"] == GPU_GROUP]
    return group


def test_crd_schema_is_the_recorded_one():
    schema = crd_schema()
    assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"])
    assert "workerGroupSpecs" in schema["properties"]["spec"]["properties"]
    readme = (CRD_SCHEMA.parent / "README.md").read_text()
    assert CRD_SCHEMA.name in readme and "v1.7.0" in readme and "Apache" in readme


def test_kuberay_manifest_is_valid():
    assert kuberay_problems(kuberay_manifest()) == []


def test_kuberay_manifest_content():
    m = kuberay_manifest()
    spec = m["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    group = gpu_group(m)
    assert 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1
    [worker] = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert float(worker["resources"]["limits"]["cpu"]) >= train_gpu_cpus_per_worker()
    import ray

    assert spec["rayVersion"] == ray.__version__ == lock_pins()["ray"]
    # Shared memory for Ray's object store and DataLoader workers in every pod.
    for c in containers(m):
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c.get("volumeMounts", [])


CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_CREDENTIAL_LIKE = re.compile(r"KEY_ID|SECRET|TOKEN|PASSW", re.I)


def credential_problems(manifest: dict) -> list[str]:
    """S3 credentials by reference to a Secret only; the S3 settings conf/storage/s3.yaml reads, set."""
    read_by_storage = set(re.findall(r"oc\.env:(\w+)", (REPO / "conf" / "storage" / "s3.yaml").read_text()))
    problems = []
    for c in containers(manifest):
        env = {e["name"]: e for e in c.get("env", [])}
        for name, e in env.items():
            if _CREDENTIAL_LIKE.search(name) and "value" in e:
                problems.append(f"{c['name']}: {name} has a literal value")
        for name in CREDENTIAL_ENV:
            if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
                problems.append(f"{c['name']}: {name} not from a Secret (secretKeyRef)")
        for name in sorted(read_by_storage - set(env)):
            problems.append(f"{c['name']}: {name} (read by conf/storage/s3.yaml) not set")
    return problems


def test_kuberay_credentials_only_by_reference():
    assert credential_problems(kuberay_manifest()) == []
    # No key material in any cluster file.
    for path in (LAUNCHER, KUBERAY, DOCKERFILE):
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|(?i:aws_secret_access_key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{30,}", text), path


def test_kuberay_literal_credential_is_refused():
    m = kuberay_manifest()
    env = containers(m)[1]["env"]
    [secret] = [e for e in env if e["name"] == "AWS_SECRET_ACCESS_KEY"]
    secret.pop("valueFrom")
    secret["value"] = "not-a-real-secret"
    assert credential_problems(m) == ["ray-worker: AWS_SECRET_ACCESS_KEY has a literal value",
                                      "ray-worker: AWS_SECRET_ACCESS_KEY not from a Secret (secretKeyRef)"]


def _gpu_container(m: dict) -> dict:
    return gpu_group(m)["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("edit, message, schema_catches", [
    (lambda m: gpu_group(m).update(replicas="two"), "'two' is not of type 'integer'", True),
    (lambda m: gpu_group(m).pop("groupName"), "'groupName' is a required property", True),
    (lambda m: _gpu_container(m)["resources"]["limits"].update({"nvidia.com/gpu": "one"}), "'one' does not match",
     True),
    (lambda m: m["spec"]["autoscalerOptions"].update(upscalingMode="Fast"),
     "'Fast' is not one of ['Default', 'Aggressive', 'Conservative']", True),
    (lambda m: m["spec"].update(enableInTreeAutoscaling="yes"), "'yes' is not of type 'boolean'", True),
    # Unknown keys: the CRD schema lets them through (the API server would drop them silently);
    # our unknown-field check refuses them, as kubectl apply does.
    (lambda m: gpu_group(m).update(maxReplica=8), "spec.workerGroupSpecs[0].maxReplica: unknown field", False),
    (lambda m: m["spec"].update(enableInTreeAutoscalling=True), "spec.enableInTreeAutoscalling: unknown field",
     False),
    (lambda m: _gpu_container(m).update(imagePullPolicyy="Always"),
     "spec.workerGroupSpecs[0].template.spec.containers[0].imagePullPolicyy: unknown field", False),
    (lambda m: m["spec"]["headGroupSpec"]["template"]["spec"].update(toleration=[]),
     "spec.headGroupSpec.template.spec.toleration: unknown field", False),
    (lambda m: m.update(apiVersion="ray.io/v1alpha2"), "apiVersion/kind must be ray.io/v1 RayCluster", False),
], ids=["replicas string", "no groupName", "gpu quantity", "enum", "bool", "group typo", "spec typo",
        "container typo", "pod spec typo", "apiVersion"])
def test_broken_kuberay_manifest_fails(edit, message, schema_catches):
    m = kuberay_manifest()
    edit(m)
    problems = kuberay_problems(m)
    assert any(message in p for p in problems), problems
    schema_errors = list(jsonschema.Draft4Validator(crd_schema()).iter_errors(m))
    assert bool(schema_errors) == schema_catches


# -- the worker image --------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, args = current.partition(" ")
        out.append((word.upper(), args.strip()))
        current = ""
    assert not current, "a continued line runs off the end"
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the context, for simple patterns."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        pattern = pattern.strip("/")
        for p in prefixes:
            if fnmatch.fnmatchcase(p, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatchcase(p.split("/")[-1], pattern[3:])):
                return True
    return False


def dockerfile_problems(text: str, dockerignore: str) -> list[str]:
    problems = []
    steps = dockerfile_instructions(text)
    ignore = [ln.strip() for ln in dockerignore.splitlines() if ln.strip() and not ln.startswith("#")]
    pyproject = tomllib.loads(PYPROJECT.read_text())

    # The base image's Python = requires-python = the driver's (Ray Client and jobs need the same).
    if not steps or steps[0][0] != "FROM":
        return ["the first instruction is not FROM"]
    base = steps[0][1].split()[0]
    m = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:3\.(\d+)[\w.-]*", base)
    if not m:
        problems.append(f"base image {base} is not an official python:3.X image")
    else:
        minor = int(m.group(1))
        if not SpecifierSet(pyproject["project"]["requires-python"]).contains(f"3.{minor}.0"):
            problems.append(f"base image Python 3.{minor} outside requires-python "
                            f"{pyproject['project']['requires-python']}")
        if minor != sys.version_info.minor:
            problems.append(f"base image Python 3.{minor} differs from this environment's 3.{sys.version_info.minor}")
        # No CUDA base: the CUDA libraries must come from the locked torch's nvidia-* wheels.
        if "nvidia-cuda-runtime" not in lock_pins():
            problems.append("a python base image needs the CUDA runtime from the lock's nvidia-* wheels")

    for word, args in steps:
        if word == "ENTRYPOINT":
            problems.append("ENTRYPOINT set: the cluster launcher runs `bash` in the container, KubeRay its own command")
        if word in ("COPY", "ADD"):
            tokens = [t for t in shlex.split(args) if not t.startswith("--")]
            for src in tokens[:-1]:
                # excluded first: outputs/ and .venv/ exist in a work tree but not in a fresh clone
                if src not in (".", "./") and dockerignored(src, ignore):
                    problems.append(f"{word} {src}: excluded by .dockerignore")
                elif not (REPO / src).exists():
                    problems.append(f"{word} {src}: no such file in the repository")

    def first_run(pattern: str) -> int | None:
        return next((i for i, (w, a) in enumerate(steps) if w == "RUN" and re.search(pattern, a)), None)

    def copied_before(i: int) -> set[str]:
        done = set()
        for word, args in steps[:i]:
            if word in ("COPY", "ADD"):
                done |= {(REPO / s).resolve().relative_to(REPO).as_posix()
                         for s in [t for t in shlex.split(args) if not t.startswith("--")][:-1]}
        return done

    lock_install = first_run(r"pip install (.* )?-r requirements\.lock")
    project_install = first_run(r"pip install (.* )?--no-deps (.* )?-e \.(\s|$)")
    if lock_install is None:
        problems.append("no `pip install -r requirements.lock`")
    elif not {"requirements.lock", "pyproject.toml"} <= copied_before(lock_install):
        problems.append("requirements.lock and pyproject.toml are not copied before the locked install")
    if project_install is None:
        problems.append("no editable `pip install --no-deps -e .` of the project (conf/ is found beside the source)")
    elif lock_install is not None and project_install < lock_install:
        problems.append("the project is installed before the locked dependencies")
    else:
        needed = {"pyproject.toml", pyproject["project"]["readme"], "conf"} | {
            p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
        done = copied_before(project_install)
        missing = [] if "." in done else sorted(needed - done)
        if missing:
            problems.append(f"not copied before the project install: {missing}")

    # Ray's cluster extras: at the lock's Ray version, everything else held at the lock's pins.
    ray_extra = first_run(r"ray\[[^\]]*default")
    if ray_extra is None:
        problems.append("no ray[default] (dashboard, autoscaler, job server) in the image")
    else:
        args = steps[ray_extra][1]
        if f"=={lock_pins()['ray']}" not in args or "-c requirements.lock" not in args:
            problems.append("ray[default] not at the lock's Ray version under -c requirements.lock")
    return problems


def test_dockerfile_structure():
    assert dockerfile_problems(DOCKERFILE.read_text(), DOCKERIGNORE.read_text()) == []


def test_dockerignore_keeps_heavy_and_private_things_out():
    ignore = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for path in (".venv/bin/python", "outputs/runs/x/summary.json", ".git/config", "avs_at_scale.egg-info/PKG-INFO",
                 "tasks/__pycache__/clip.cpython-311.pyc"):
        assert dockerignored(path, ignore), path
    for path in ("flows/pipeline.py", "conf/config.yaml", "requirements.lock", "README.md"):
        assert not dockerignored(path, ignore), path


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize("edit, message", [
    (lambda t: _replace(t, "FROM python:3.11-slim-trixie", "FROM python:3.12-slim-trixie"), "outside requires-python"),
    (lambda t: _replace(t, "FROM python:3.11-slim-trixie", "FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04"),
     "not an official python:3.X image"),
    (lambda t: _replace(t, "COPY bench ./bench", "COPY benches ./benches"), "COPY benches: no such file"),
    (lambda t: _replace(t, "COPY flows ./flows", "COPY outputs ./outputs"), "COPY outputs: excluded by .dockerignore"),
    (lambda t: _replace(t, "COPY flows ./flows\n", ""), "not copied before the project install: ['flows']"),
    (lambda t: _replace(t, "RUN pip install -r requirements.lock", "RUN pip install torch"),
     "no `pip install -r requirements.lock`"),
    (lambda t: _replace(t, "COPY requirements.lock pyproject.toml ./\n", ""),
     "not copied before the locked install"),
    (lambda t: _replace(t, "pip install --no-deps -e .", "pip install ."), "no editable `pip install --no-deps -e .`"),
    (lambda t: _replace(t, "ray[default,client]==2.60.0", "ray[default,client]"), "not at the lock's Ray version"),
    (lambda t: t + '\nENTRYPOINT ["python"]\n', "ENTRYPOINT set"),
], ids=["python 3.12", "cuda base", "missing source", "ignored source", "package not copied", "no lock",
        "lock copied late", "not editable", "ray unpinned", "entrypoint"])
def test_broken_dockerfile_fails(edit, message):
    problems = dockerfile_problems(edit(DOCKERFILE.read_text()), DOCKERIGNORE.read_text())
    assert any(message in p for p in problems), problems


# -- the files agree ------------------------------------------------------------------------

def test_one_image_everywhere():
    launcher = yaml.safe_load(LAUNCHER.read_text())
    image = launcher["docker"]["image"]
    assert {c["image"] for c in containers(kuberay_manifest())} == {image}
    # ... the one the Dockerfile's build command tags.
    assert f"docker build -f infra/docker/Dockerfile -t {image} ." in DOCKERFILE.read_text()
    assert f"docker build -f infra/docker/Dockerfile -t {image} ." in LAUNCHER.read_text()
