"""The manifests of docker/kubernetes, checked as far as a machine without a cluster can: each against
the schema the API server would apply (Kubernetes' own, through kubernetes-validate, and the Dask
operator's custom resource definition, shipped with dask-kubernetes), unknown fields refused as
``kubectl apply --validate=strict`` does; and the commands they start, parsed by the project's and
Dask's command lines."""

import copy
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from distributed.cli.dask_worker import main as dask_worker

from pipelines import cli

MANIFESTS = Path(__file__).resolve().parent.parent / "docker" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"
OPERATOR_CRDS = files("dask_kubernetes") / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"


def documents() -> dict[str, dict]:
    return {f"{path.name}:{document['kind']}": document
            for path in sorted(MANIFESTS.glob("*.yaml")) for document in yaml.safe_load_all(path.read_text())}


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists an object's fields."""
    schema = copy.deepcopy(schema)
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return schema


def validate(document: dict) -> None:
    group, _, version = document["apiVersion"].rpartition("/")
    if group == "kubernetes.dask.org":
        definition = yaml.safe_load((OPERATOR_CRDS / f"{document['kind'].lower()}.yaml").read_text())
        [served] = [entry for entry in definition["spec"]["versions"] if entry["name"] == version]
        schema = served["schema"]["openAPIV3Schema"]
        # fields of every object, which a definition leaves out (metadata: an ObjectMeta, checked by the server)
        schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
        jsonschema.validate(document, strict(schema))
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(documents()))
def test_each_manifest_passes_the_schema_of_its_kind(name):
    validate(documents()[name])


def test_the_schemas_refuse_a_broken_manifest():
    manifests = documents()
    cluster = copy.deepcopy(manifests["dask-cluster.yaml:DaskCluster"])
    cluster["spec"]["worker"]["replica"] = 2  # a misspelt field
    job = copy.deepcopy(manifests["study-job.yaml:Job"])
    job["spec"]["template"]["spec"]["containers"][0]["args"] = "ssl-pipeline study"  # not a list
    for broken in (cluster, job):
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            validate(broken)


def container(document: dict, role: str | None = None) -> dict:
    spec = document["spec"][role]["spec"] if role else document["spec"]["template"]["spec"]
    [only] = spec["containers"]
    return only


def environment(entry: dict) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in entry["env"]}


def test_the_study_job_reaches_the_clusters_scheduler_and_shares_its_store(monkeypatch):
    manifests = documents()
    cluster, job = manifests["dask-cluster.yaml:DaskCluster"], manifests["study-job.yaml:Job"]
    study = container(job)
    taken = []
    monkeypatch.setattr(cli, "command_study", lambda args: taken.append(args) or 0)
    assert study["args"][0] == "ssl-pipeline" and cli.main(study["args"][1:]) == 0
    [port] = [entry["port"] for entry in cluster["spec"]["scheduler"]["service"]["ports"] if entry["name"] == "tcp-comm"]
    assert taken[0].cluster == f"tcp://{cluster['metadata']['name']}-scheduler:{port}"  # the operator's service name
    worker = container(cluster, "worker")
    shared = ("SSL_PIPELINE_STORE", "PREFECT_API_URL")
    assert {name: environment(study)[name] for name in shared} == {name: environment(worker)[name] for name in shared}
    assert environment(worker)["SSL_PIPELINE_STORE"].startswith("s3://")
    assert study["envFrom"] == worker["envFrom"]  # the store's credentials


def test_the_workers_run_one_task_at_a_time_with_dasks_own_options():
    worker = container(documents()["dask-cluster.yaml:DaskCluster"], "worker")
    assert worker["args"][:2] == ["dask", "worker"]
    context = dask_worker.make_context("dask worker", list(worker["args"][2:]))
    assert context.params["nthreads"] == 1
    assert worker["resources"]["limits"]["cpu"] == "1"
