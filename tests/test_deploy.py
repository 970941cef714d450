"""Checks for the operations artefacts in deploy/.

Kubernetes manifests are validated against the upstream OpenAPI schemas (strict mode, so an
unknown or misspelt field fails); CRD resources (KEDA, Prometheus Operator) get explicit field
checks; the compose file, Dockerfile, Grafana dashboard and alert rules are checked for
structure and for referring only to metrics the worker exports; promtool checks the Prometheus
configuration and runs the alert-rule unit tests. The promtool tests skip when promtool is not
installed, except under CI=true, where a missing binary fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from worker.acl import ADMIN_USER, WORKER_USER, admin_rules, worker_rules
from worker.config import Settings
from worker.connection import redact
from worker.metrics import GroupStats, Metrics
from worker.protection_metrics import TenantProtection

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "lehnz-stitch-dashboard.json"
COMPOSE = DEPLOY / "docker-compose.yml"


def _k8s_version() -> str:
    """Kubernetes 1.30 when kubernetes-validate ships its schemas, else its oldest shipped one."""
    versions = all_versions()
    return "1.30.0" if any(v.startswith("1.30.") for v in versions) else versions[0]


K8S_VERSION = _k8s_version()


def _exported_metrics() -> frozenset[str]:
    """Every family and sample name the worker's registry exports (scrape-time gauges too)."""
    metrics = Metrics()
    metrics.watch_group(lambda: GroupStats(lag=1, pending=1, consumers=[("replica", 1, 1.0)]))
    metrics.watch_protection(lambda: [TenantProtection("t", {"size": 1}, 2)])
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


KNOWN_METRICS = _exported_metrics()
METRIC_RE = re.compile(r"\bstitch_[a-z_]+")

CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
EXPECTED_ALERTS = {
    "StitchDown",
    "StitchNoReplicasUp",
    "StitchRedisDisconnected",
    "StitchLagGrowing",
    "StitchDeadLettersRising",
    "StitchNoCommit",
    "StitchReconnectStorm",
    "StitchConsumerStuck",
    "StitchRedisRefusing",
    "StitchQuarantineGrowing",
}


def require_binary(name: str) -> str:
    """Return the path of ``name``; skip without it, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} is not on PATH (Debian: apt-get install -y --no-install-recommends prometheus)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so this is an error, not a skip")
        pytest.skip(message)
    return path


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing its output."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_yaml(path: Path) -> Any:
    """Parse a single-document YAML file."""
    return yaml.safe_load(path.read_text())


@cache
def manifest_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every Kubernetes object under deploy/k8s as (file name, object), kustomization excluded."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return tuple(docs)


def the(kind: str) -> dict[str, Any]:
    """The one manifest of ``kind``."""
    found = [doc for _, doc in manifest_docs() if doc["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def native_docs() -> list[tuple[str, dict[str, Any]]]:
    """Manifests of built-in kinds (those the Kubernetes schemas cover)."""
    return [(f, d) for f, d in manifest_docs() if (d["apiVersion"], d["kind"]) not in CRD_KINDS]


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule in deploy/prometheus/rules.yml."""
    groups = load_yaml(PROM / "rules.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def worker_container() -> dict[str, Any]:
    """The worker container of the Deployment."""
    containers = the("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every dashboard panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def unknown_metrics(expr: str) -> set[str]:
    """Names in ``expr`` that look like stitch metrics but are not exported by the worker."""
    return set(METRIC_RE.findall(expr)) - KNOWN_METRICS


# --- Kubernetes: built-in kinds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "doc"), native_docs(), ids=[f"{f}:{d['kind']}" for f, d in native_docs()]
)
def test_native_manifest_validates_strictly(filename: str, doc: dict[str, Any]) -> None:
    """Each non-CRD manifest validates against the Kubernetes schema in strict mode."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_unknown_fields() -> None:
    """Strict validation really catches a misspelt field (guards the test above)."""
    bad = json.loads(json.dumps(the("Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml lists every manifest except the Secret example, and nothing else."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(resources) == on_disk
    assert "secret.example.yaml" not in resources


def test_every_resource_kind_is_present() -> None:
    """The deploy/k8s directory holds each kind the deployment needs, once."""
    kinds = sorted(d["kind"] for _, d in manifest_docs())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "Namespace",
            "PodDisruptionBudget",
            "PrometheusRule",
            "ScaledObject",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "TriggerAuthentication",
        ]
    )


def test_deployment_wiring() -> None:
    """The Deployment takes its consumer name, config and Redis URL from the right sources."""
    deployment = the("Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = worker_container()
    assert container["args"] == ["run"]
    env = {e["name"]: e for e in container["env"]}
    assert env["STITCH_CONSUMER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "STITCH_REDIS_URL" not in env
    config = the("ConfigMap")["data"]
    assert config["STITCH_REDIS_URL"].startswith("redis://stitch-worker@")
    assert redact(config["STITCH_REDIS_URL"]) == config["STITCH_REDIS_URL"]  # no password
    secret = the("Secret")
    [volume] = [
        v for v in the("Deployment")["spec"]["template"]["spec"]["volumes"] if "secret" in v
    ]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    [item] = volume["secret"]["items"]
    assert item["key"] == "password" and item["key"] in secret["stringData"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert config["STITCH_REDIS_PASSWORD_FILE"] == f"{mount['mountPath']}/{item['path']}"
    assert secret["stringData"]["username"] == WORKER_USER
    assert [s["configMapRef"]["name"] for s in container["envFrom"]] == [
        the("ConfigMap")["metadata"]["name"]
    ]


def test_deployment_probes_and_port() -> None:
    """Liveness uses /healthz and readiness /readyz on the configured metrics port."""
    container = worker_container()
    config = the("ConfigMap")["data"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(config["STITCH_METRICS_PORT"]) == 9108
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_deployment_hardening_and_resources() -> None:
    """The pod runs non-root on a read-only root filesystem with requests and limits."""
    pod = the("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = worker_container()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts


def test_grace_period_exceeds_shutdown_timeout() -> None:
    """terminationGracePeriodSeconds is longer than STITCH_SHUTDOWN_TIMEOUT_S."""
    pod = the("Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in worker_container()["env"]}
    timeout = (
        env.get("STITCH_SHUTDOWN_TIMEOUT_S")
        or the("ConfigMap")["data"]["STITCH_SHUTDOWN_TIMEOUT_S"]
    )
    assert pod["terminationGracePeriodSeconds"] > float(timeout)


def test_service_and_pdb_select_the_worker_pods() -> None:
    """The Service and the PodDisruptionBudget select the Deployment's pods."""
    pod_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = the("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    pdb = the("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --- Kubernetes: CRDs ----------------------------------------------------------------------------


def test_scaledobject_fields() -> None:
    """The KEDA ScaledObject targets the Deployment with a redis-streams trigger on our group."""
    scaled = the("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["name"]
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == the("Deployment")["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
    config = the("ConfigMap")["data"]
    assert meta["stream"] == config["STITCH_INPUT_STREAM"]
    assert meta["consumerGroup"] == config["STITCH_GROUP"]
    assert {"lagCount", "pendingEntriesCount"} & set(meta)
    for key in {"lagCount", "pendingEntriesCount"} & set(meta):
        assert int(meta[key]) > 0
    has_address = "address" in meta or "addressFromEnv" in meta
    auth = trigger.get("authenticationRef", {}).get("name")
    assert has_address or auth == the("TriggerAuthentication")["metadata"]["name"]


def test_triggerauthentication_fields() -> None:
    """The TriggerAuthentication maps address and password from the Redis Secret."""
    trigger_auth = the("TriggerAuthentication")
    assert trigger_auth["apiVersion"] == "keda.sh/v1alpha1"
    secret = the("Secret")
    refs = trigger_auth["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} >= {"address", "password"}
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]


def test_servicemonitor_fields() -> None:
    """The ServiceMonitor selects the Service and scrapes its metrics port at /metrics."""
    monitor = the("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = the("Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
    # The rules select job="lehnz-stitch"; the operator names the job after the Service.
    assert "jobLabel" not in monitor["spec"]
    assert service["metadata"]["name"] == "lehnz-stitch"


def test_prometheusrule_fields() -> None:
    """The PrometheusRule has named groups of rules with alert or record and expr."""
    rule = the("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r)
            assert isinstance(r["expr"], str)
            assert r["expr"].strip()


def test_prometheusrule_matches_rules_file() -> None:
    """The PrometheusRule's spec.groups equal deploy/prometheus/rules.yml's groups."""
    assert the("PrometheusRule")["spec"]["groups"] == load_yaml(PROM / "rules.yml")["groups"]


# --- docker-compose and Dockerfile ---------------------------------------------------------------


def test_compose_services() -> None:
    """Compose runs Redis with AOF, two distinct worker consumers and Prometheus."""
    services = load_yaml(COMPOSE)["services"]
    assert "redis" in services
    assert "prometheus" in services
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert len(workers) == 2
    consumers = {s["environment"]["STITCH_CONSUMER"] for s in workers.values()}
    assert len(consumers) == 2
    groups = {s["environment"]["STITCH_GROUP"] for s in workers.values()}
    assert len(groups) == 1
    for worker in workers.values():
        env = worker["environment"]
        assert env["STITCH_REDIS_URL"].startswith(f"redis://{WORKER_USER}@redis:")
        assert env["STITCH_REDIS_PASSWORD_FILE"] == "/run/secrets/redis-password"
        assert worker["secrets"] == ["redis-password"]
        assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / worker["build"]["context"] / "pyproject.toml").is_file()
        grace = int(worker["stop_grace_period"].removesuffix("s"))
        assert grace > float(env["STITCH_SHUTDOWN_TIMEOUT_S"])


def test_compose_redis_users_are_the_readme_users() -> None:
    """The trial's ACL file defines stitch-worker and stitch-admin with exactly the rules of
    worker/acl.py (the README's lines), the worker's password being the secret file's."""
    lines = (DEPLOY / "redis-users.acl").read_text().splitlines()
    users = {words[1]: " ".join(words[2:]) for words in map(str.split, lines)}
    services = load_yaml(COMPOSE)
    secret = DEPLOY / services["secrets"]["redis-password"]["file"]
    assert (DEPLOY / "redis-password.trial").samefile(secret)
    password = secret.read_text().rstrip("\n")
    defaults = Settings(consumer="x")
    assert users[WORKER_USER] == " ".join(["reset", "on", f">{password}", *worker_rules(defaults)])
    admin = users[ADMIN_USER].split(" ", 3)
    assert admin[:2] == ["reset", "on"]
    assert admin[3] == " ".join(admin_rules(defaults))
    mounts = services["services"]["redis"]["volumes"]
    assert "./redis-users.acl:/etc/redis/users.acl:ro" in mounts
    assert "--aclfile /etc/redis/users.acl" in " ".join(services["services"]["redis"]["command"])


def test_cluster_compose_runs_sharded_workers_on_every_node() -> None:
    """The cluster trial: six nodes from one config file, each with the sharded ACL users
    (``STITCH_SHARDS=8 lehnz-stitch acl`` with the trial passwords), built by a one-shot
    ``redis-cli --cluster create``; two workers whose settings (a redis+cluster:// URL
    naming nodes, STITCH_SHARDS=8) the worker accepts."""
    services = load_yaml(DEPLOY / "docker-compose.cluster.yml")["services"]
    nodes = [name for name in services if name.startswith("redis-")]
    assert len(nodes) == 6
    for name in nodes:
        mounts = services[name]["volumes"]
        assert "./redis-cluster.conf:/usr/local/etc/redis/cluster.conf:ro" in mounts
        assert "./redis-users-sharded.acl:/etc/redis/users.acl:ro" in mounts
        assert services[name]["command"][-2:] == ["--cluster-announce-hostname", name]
    assert "--cluster-replicas 1" in services["cluster-init"]["command"][-1]
    conf = (DEPLOY / "redis-cluster.conf").read_text()
    assert "cluster-enabled yes" in conf and "aclfile /etc/redis/users.acl" in conf
    lines = (DEPLOY / "redis-users-sharded.acl").read_text().splitlines()
    users = {words[1]: " ".join(words[2:]) for words in map(str.split, lines)}
    sharded = Settings(shards=8, consumer="x")
    assert users[WORKER_USER].endswith(" ".join(worker_rules(sharded)))
    assert users[ADMIN_USER].endswith(" ".join(admin_rules(sharded)))
    for worker in ("worker-1", "worker-2"):
        env = services[worker]["environment"]
        assert env["STITCH_REDIS_URL"].startswith(f"redis+cluster://{WORKER_USER}@redis-1:")
        settings = Settings.from_env(env)
        assert settings.shards == 8 and settings.wait_replicas == 1


def test_compose_prometheus_scrapes_both_workers() -> None:
    """Prometheus mounts the config and rules from deploy/prometheus and scrapes both workers."""
    services = load_yaml(COMPOSE)["services"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/rules.yml"] == "/etc/prometheus/rules.yml"
    config = load_yaml(PROM / "prometheus.yml")
    assert config["rule_files"] == ["rules.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "lehnz-stitch"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    workers = [name for name in services if name.startswith("worker")]
    for name in workers:
        metrics_port = services[name]["environment"]["STITCH_METRICS_PORT"]
        assert f"{name}:{metrics_port}" in targets


def test_dockerfile_essentials() -> None:
    """The Dockerfile builds on python:3.11-slim and runs lehnz-stitch run as a non-root user."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M) or re.search(
        r"^FROM python:3\.11-slim", text, re.M
    )
    assert "pip install --no-cache-dir ." in text
    assert 'ENTRYPOINT ["lehnz-stitch"]' in text
    assert 'CMD ["run"]' in text
    assert re.search(r"^EXPOSE 9108$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_package_data_ships_every_resource_file() -> None:
    """`pip install .` (the image's install step) ships every non-Python file of the packages:
    each file is matched against the package-data of the innermost listed package holding it."""
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data = setuptools_cfg.get("package-data", {})
    packages = {Path(*name.split(".")): name for name in setuptools_cfg["packages"]}
    missing = []
    for top in {path.parts[0] for path in packages}:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT)
            owner = max((p for p in packages if p in relative.parents), key=lambda p: len(p.parts))
            patterns = package_data.get(packages[owner], []) + package_data.get("*", [])
            if not any(fnmatch(relative.relative_to(owner).as_posix(), pat) for pat in patterns):
                missing.append(relative.as_posix())
    assert not missing, f"not in [tool.setuptools.package-data], so not in the image: {missing}"


# --- Prometheus ----------------------------------------------------------------------------------


@pytest.mark.prometheus
def test_promtool_check_config() -> None:
    """promtool accepts deploy/prometheus/prometheus.yml (and the rule file it loads)."""
    promtool = require_binary("promtool")
    result = run_tool(promtool, "check", "config", PROM / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    """promtool accepts deploy/prometheus/rules.yml."""
    promtool = require_binary("promtool")
    result = run_tool(promtool, "check", "rules", PROM / "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_rule_unit_tests() -> None:
    """The alert-rule unit tests in deploy/prometheus/rules_test.yml pass."""
    promtool = require_binary("promtool")
    result = run_tool(promtool, "test", "rules", PROM / "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_expected_alerts_are_defined() -> None:
    """rules.yml defines the expected alerts, each with a severity, summary and description."""
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_rule_unit_tests_cover_every_alert() -> None:
    """rules_test.yml makes every alert fire and also checks each stays quiet when healthy."""
    tests = load_yaml(PROM / "rules_test.yml")["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == EXPECTED_ALERTS
    healthy = [c for c in tests if "healthy" in c["name"]]
    assert len(healthy) == 1
    assert {c["alertname"] for c in healthy[0]["alert_rule_test"] if not c["exp_alerts"]} == (
        EXPECTED_ALERTS
    )


def test_known_metrics_come_from_the_registry() -> None:
    """The names rules and panels are checked against are what the registry exports."""
    assert {"stitch_batch_duration_seconds_bucket", "stitch_identify_total"} <= KNOWN_METRICS
    assert {"stitch_group_lag", "stitch_consumer_idle_seconds"} <= KNOWN_METRICS
    assert "stitch_batch_duration_seconds_total" not in KNOWN_METRICS


def test_rules_reference_only_known_metrics() -> None:
    """Every stitch_* name in a rule expression is a metric the worker exports."""
    for rule in alert_rules():
        assert METRIC_RE.search(rule["expr"]) or "up{" in rule["expr"], rule["alert"]
        assert not unknown_metrics(rule["expr"]), (rule["alert"], unknown_metrics(rule["expr"]))


def test_readme_alert_table_lists_every_alert() -> None:
    """deploy/README.md's alert table names every alert in rules.yml."""
    readme = (DEPLOY / "README.md").read_text()
    for name in EXPECTED_ALERTS:
        assert f"| `{name}` |" in readme, name


# --- Grafana -------------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    """The dashboard is valid JSON with unique panel ids and a PromQL target on every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["refId"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job"} <= variables


def test_dashboard_covers_the_key_views() -> None:
    """The dashboard shows throughput, dead letters, outcomes, lag, latency, cache, commits."""
    exprs = " ".join(e for _, e in dashboard_targets())
    assert "rate(stitch_events_emitted_total" in exprs
    assert "by (reason)" in exprs
    assert "by (outcome)" in exprs
    assert "stitch_group_lag" in exprs
    assert "stitch_group_pending" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(stitch_batch_duration_seconds_bucket" in (
        exprs
    )
    assert "stitch_end_to_end_delay_seconds_bucket" in exprs
    assert "stitch_resolver_cache_misses_total" in exprs
    assert "stitch_reconnects_total" in exprs
    assert "time() - max(stitch_last_commit_timestamp_seconds" in exprs


def test_dashboard_references_only_known_metrics() -> None:
    """Every stitch_* name in a panel expression is a metric the worker exports."""
    for title, expr in dashboard_targets():
        assert METRIC_RE.search(expr), title
        assert not unknown_metrics(expr), (title, unknown_metrics(expr))


@pytest.mark.prometheus
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard expression is valid PromQL (checked by promtool as recording rules)."""
    promtool = require_binary("promtool")
    rules = [
        {
            "record": f"dashboard:panel_{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".+"),
        }
        for i, (_, expr) in enumerate(dashboard_targets())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the sharded overlay (deploy/k8s-sharded) ---------------------------------------------------

SHARDED = DEPLOY / "k8s-sharded"


def merge_patch(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: what kustomize does with a CRD patch (lists replaced)."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return patch
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(base.get(key), value)
    return merged


@cache
def sharded_docs() -> dict[str, dict[str, Any]]:
    """The base's objects of each patched kind, with the overlay's patches applied."""
    kustomization = load_yaml(SHARDED / "kustomization.yaml")
    assert kustomization["resources"] == ["../k8s"]
    patched = {}
    for entry in kustomization["patches"]:
        patch = load_yaml(SHARDED / entry["path"])
        base = the(patch["kind"])
        assert patch["metadata"]["name"] == base["metadata"]["name"]
        patched[patch["kind"]] = merge_patch(base, patch)
    return patched


def test_the_sharded_overlay_sets_the_shards_and_scales_on_the_summed_lag(tmp_path: Path) -> None:
    config = sharded_docs()["ConfigMap"]
    kubernetes_validate.validate(config, K8S_VERSION, strict=True)
    settings = Settings.from_env(config["data"])
    assert settings.shards == 8
    assert settings.shard_numbers == tuple(range(8))
    (trigger,) = sharded_docs()["ScaledObject"]["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
    assert int(meta["threshold"]) > 0
    assert meta["serverAddress"].startswith("http")
    query = meta["query"]
    assert re.fullmatch(r"sum\(max by \(shard\) \(stitch_group_lag\{.*\}\)\)", query.strip())
    assert not unknown_metrics(query)
    path = tmp_path / "keda_rule.yml"
    rule = {"record": "keda:summed_lag", "expr": query}
    path.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [rule]}]}))
    result = run_tool(require_binary("promtool"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sharded_overlay_builds_with_kustomize_as_patched_here() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH; the merge above stands in for kustomize")
    result = run_tool(kubectl, "kustomize", SHARDED)
    assert result.returncode == 0, result.stderr
    built = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}
    for kind, doc in sharded_docs().items():
        assert (
            built[kind]["spec" if kind == "ScaledObject" else "data"]
            == (doc["spec" if kind == "ScaledObject" else "data"])
        )
