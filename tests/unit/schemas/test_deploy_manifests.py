"""k8s/ and docker-compose.yml describe the same deployment with the same settings.

Nothing here talks to a cluster or a Docker engine: the files are parsed with PyYAML and
compared, so a setting added to one deployment style and forgotten in the other fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# k8s workload name == compose service name; the value is the package that reads its settings.
SERVICES = {
    "collector": "collector",
    "metadata-publisher": "enricher",
    "enricher": "enricher",
    "processors": "processors",
}
IMAGE = "flowscope:0.1.0"
KAFKA_IMAGE = "apache/kafka:4.1.1"
# Values that are addresses of this particular deployment, not settings of flowscope.
PER_DEPLOYMENT_VALUES = {"FLOWSCOPE_BOOTSTRAP_SERVERS"}
# How the cluster is secured is the cluster's: k8s ships SASL_SSL against a user's cluster,
# compose its own plaintext broker; both are checked against each other below.
SECURITY_VALUES = {
    f"FLOWSCOPE_KAFKA_{name}"
    for name in (
        "SECURITY_PROTOCOL",
        "SASL_MECHANISM",
        "SASL_USERNAME",
        "SASL_PASSWORD_FILE",
        "SSL_CA_FILE",
    )
}
KAFKA_SECRET = "flowscope-kafka"
COLLECTOR_HOST_PATHS = ("/sys/fs/cgroup", "/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}

Obj = dict[str, Any]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _load_k8s() -> list[Obj]:
    docs: list[Obj] = []
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert isinstance(doc, dict), f"{path.name}: a document is not a mapping: {doc!r}"
            doc["__file__"] = path.name
            docs.append(doc)
    return docs


DOCS = _load_k8s()
COMPOSE: Obj = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _of_kind(kind: str) -> list[Obj]:
    return [d for d in DOCS if d["kind"] == kind]


def _one(kind: str, name: str) -> Obj:
    found = [d for d in _of_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def _workloads() -> dict[str, Obj]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] in ("Deployment", "DaemonSet")}


def _containers(workload: Obj) -> list[Obj]:
    containers: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def _all_containers() -> Iterator[tuple[str, Obj]]:
    for name, workload in _workloads().items():
        for container in _containers(workload):
            yield name, container


def _compose_service(name: str) -> Obj:
    service: Obj = COMPOSE["services"][name]
    return service


def _compose_env(name: str) -> dict[str, str]:
    env = _compose_service(name).get("environment") or {}
    assert isinstance(env, dict), f"compose {name}: write environment as a mapping"
    return {str(k): str(v) for k, v in env.items()}


def _compose_mounts(name: str) -> dict[str, str]:
    """Container path -> host path (or volume name), from short or long volume syntax."""
    mounts: dict[str, str] = {}
    for volume in _compose_service(name).get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = _compose_default(volume["source"])
        else:
            source, target = volume.split(":")[:2]
            mounts[target] = source
    return mounts


def _compose_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default``; anything else unchanged."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-(?P<default>[^}]*)\}", value)
    return match["default"] if match else value


def _k8s_env(container: Obj) -> dict[str, str | None]:
    """Name -> value as the container sees it (None where it comes from the downward API)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        cm = _one("ConfigMap", source["configMapRef"]["name"])
        env.update(cm["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value")
    return env


def _quantity(value: str | int) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_every_manifest_is_a_labelled_object_in_the_flowscope_namespace() -> None:
    assert {d["kind"] for d in DOCS} >= {
        "Namespace",
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Deployment",
    }
    for doc in DOCS:
        where = f"{doc['__file__']}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), where
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "flowscope", where
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], where
        else:
            assert doc["metadata"]["namespace"] == "flowscope", where
    assert _one("Namespace", "flowscope")


def test_kustomization_lists_exactly_the_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["namespace"] == "flowscope"
    assert sorted(kustomization["resources"]) == [p.name for p in _manifest_files()]
    name, tag = IMAGE.split(":")
    assert kustomization["images"] == [{"name": name, "newTag": tag}]


def test_the_same_services_in_both_styles() -> None:
    assert set(_workloads()) == set(SERVICES)
    assert set(COMPOSE["services"]) == set(SERVICES) | {"kafka"}
    assert _workloads()["collector"]["kind"] == "DaemonSet"


def test_one_image_everywhere() -> None:
    images = {c["image"] for _, c in _all_containers()}
    images |= {_compose_service(name)["image"] for name in SERVICES}
    assert images == {IMAGE}
    assert _compose_service("kafka")["image"] == KAFKA_IMAGE
    for name in SERVICES:
        assert _compose_service(name)["build"] == ".", name


def test_same_commands_in_both_styles() -> None:
    for name, container in _all_containers():
        compose_command = _compose_service(name)["command"]
        if name == "metadata-publisher":
            # In a cluster it watches the API (two replicas, one leader); under compose it
            # reads a mounted file.
            assert container["args"] == [
                "enricher",
                "publish",
                "--watch",
                "--leader-election",
                "true",
            ]
            assert compose_command[:2] == ["enricher", "publish"]
            path = compose_command[compose_command.index("--file") + 1]
            assert _compose_mounts(name)[path] == "./k8s/examples/objects.yaml"
        else:
            assert container["args"] == compose_command, name
        assert "command" not in container, f"{name}: the image's entrypoint is `python -m`"


def test_settings_come_from_the_configmap_and_match_compose() -> None:
    configmaps = {d["metadata"]["name"]: d for d in _of_kind("ConfigMap")}
    assert "flowscope-config" in configmaps
    for name, container in _all_containers():
        refs = [s["configMapRef"]["name"] for s in container.get("envFrom", [])]
        assert "flowscope-config" in refs, name
        for entry in container.get("env", []):
            # A literal belongs in the ConfigMap, so that each value is defined once.
            assert "valueFrom" in entry and "value" not in entry, f"{name}: {entry}"
        k8s_env = _k8s_env(container)
        compose_env = _compose_env(name)
        assert all(key.startswith("FLOWSCOPE_") for key in k8s_env), name
        assert sorted(k8s_env) == sorted(compose_env), f"{name}: env names differ"
        for key, value in k8s_env.items():
            if value is not None and key not in PER_DEPLOYMENT_VALUES | SECURITY_VALUES:
                assert _compose_default(compose_env[key]) == value, f"{name}: {key}"


def test_bootstrap_servers_are_listeners_the_broker_advertises() -> None:
    kafka_env = _compose_env("kafka")
    roles = kafka_env["KAFKA_PROCESS_ROLES"].split(",")
    assert sorted(roles) == ["broker", "controller"]  # KRaft, no ZooKeeper
    advertised = {
        listener.split("://")[1] for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name in SERVICES:
        assert _compose_env(name)["FLOWSCOPE_BOOTSTRAP_SERVERS"] in advertised, name
    published = {p.rsplit(":", 1)[0] for p in _compose_service("kafka")["ports"]}
    host_port = _compose_env("collector")["FLOWSCOPE_BOOTSTRAP_SERVERS"]
    assert f"{host_port.split(':')[0]}:{host_port.split(':')[1]}" in published


def test_collector_runs_on_every_node_with_the_host_kernel_in_reach() -> None:
    daemonset = _one("DaemonSet", "collector")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert {"operator": "Exists"} in pod["tolerations"]  # every taint, every node
    (container,) = pod["containers"]
    security = container["securityContext"]
    added = set(security.get("capabilities", {}).get("add", []))
    # The set the least-privilege integration test runs the collector with.
    assert security.get("privileged") is not True
    assert added == {"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"}
    assert container["env"] == [
        {
            "name": "FLOWSCOPE_NODE_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        }
    ]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounted = {m["mountPath"]: host_paths.get(m["name"]) for m in container["volumeMounts"]}
    for path in COLLECTOR_HOST_PATHS:
        assert mounted.get(path) == path, path

    compose = _compose_service("collector")
    assert "privileged" not in compose
    assert (compose["cap_drop"], set(compose["cap_add"])) == (["ALL"], added)
    assert compose["pid"] == "host"
    assert compose["network_mode"] == "host"
    binds = _compose_mounts("collector")
    for path in COLLECTOR_HOST_PATHS:
        assert binds.get(path) == path, path


def test_only_the_collector_runs_as_root() -> None:
    for name, workload in _workloads().items():
        if name == "collector":
            continue
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert "user" not in _compose_service(name), name


@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_every_container_has_small_requests_within_limits(resource: str) -> None:
    for name, container in _all_containers():
        request = _quantity(container["resources"]["requests"][resource])
        limit = _quantity(container["resources"]["limits"][resource])
        assert 0 < request <= limit, f"{name} {resource}"
        ceiling = 2.0 if resource == "cpu" else 2 * 2**30
        assert limit <= ceiling, f"{name} {resource}: limit {limit} is not small"


# (API group, resource) pairs the metadata publisher reads.
READ = [
    ("", "pods"),
    ("", "nodes"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("apps", "replicasets"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
]


def _bound_rules(service_account: str) -> list[tuple[str, Obj]]:
    """(binding kind, rule) for every rule granted to the service account."""
    granted: list[tuple[str, Obj]] = []
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for binding in _of_kind(binding_kind):
            subjects = binding["subjects"]
            if not any(
                s["kind"] == "ServiceAccount"
                and s["name"] == service_account
                and s["namespace"] == "flowscope"
                for s in subjects
            ):
                continue
            assert binding["roleRef"]["kind"] == role_kind
            role = _one(role_kind, binding["roleRef"]["name"])
            granted += [(binding_kind, rule) for rule in role["rules"]]
    return granted


def _verbs(rules: list[tuple[str, Obj]], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for _, rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


def test_publisher_may_read_the_cluster_and_hold_a_lease_nothing_more() -> None:
    pod = _one("Deployment", "metadata-publisher")["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    _one("ServiceAccount", account)
    rules = _bound_rules(account)
    for group, resource in READ:
        assert _verbs(rules, group, resource) == {"get", "list", "watch"}, (group, resource)
    assert _verbs(rules, "coordination.k8s.io", "leases") == {"get", "create", "update"}
    # Lease writes stay in flowscope's namespace; cluster-wide grants are read-only.
    for binding_kind, rule in rules:
        if binding_kind == "ClusterRoleBinding":
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert "*" not in rule["resources"], rule


def test_other_services_have_no_api_access() -> None:
    for name, workload in _workloads().items():
        if name == "metadata-publisher":
            continue
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert _bound_rules(pod["serviceAccountName"]) == [], name


def test_every_setting_in_the_manifests_is_read_by_its_service() -> None:
    """A FLOWSCOPE_* name nobody reads is a typo or a leftover: the value would be ignored."""
    unread = []
    for name, package in SERVICES.items():
        sources = [ROOT / package, ROOT / "flowscope"]
        text = "\n".join(
            p.read_text(encoding="utf-8") for src in sources for p in sorted(src.rglob("*.py"))
        )
        unread += [f"{name}: {key} ({package}/)" for key in _compose_env(name) if key not in text]
    assert unread == [], "set in the deployments but never read by the service"


def test_example_objects_file_is_what_the_publisher_reads() -> None:
    from enricher.publish.kubeobjects import parse_text

    parsed = parse_text((K8S / "examples" / "objects.yaml").read_text(encoding="utf-8"))
    assert parsed.skipped == []
    by_kind: dict[str, list[Any]] = {}
    for meta in parsed.metas:
        by_kind.setdefault(type(meta).__name__, []).append(meta)
    assert sorted((n.name, n.zone) for n in by_kind["NodeMeta"]) == [
        ("node-a", "zone-a"),
        ("node-b", "zone-b"),
    ]
    assert sorted((p.workload_kind, p.workload_name, p.node) for p in by_kind["PodMeta"]) == [
        ("Deployment", "api", "node-b"),
        ("Deployment", "web", "node-a"),
    ]
    assert [s.cluster_ips for s in by_kind["ServiceMeta"]] == [["10.96.0.20"]]


def _k8s_literal_env(name: str) -> dict[str, str]:
    (container,) = _containers(_workloads()[name])
    env = {k: v for k, v in _k8s_env(container).items() if v is not None}
    if name == "collector":
        env["FLOWSCOPE_NODE_NAME"] = "node-a"  # the downward API's value
    return env


def test_configmap_values_are_accepted_by_each_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value passes the service's own option parsing (types, ranges, CIDR syntax)."""
    from collector.settings import build_parser as collector_parser
    from enricher.__main__ import build_parser as enricher_parser
    from processors.__main__ import parser as processors_parser

    args = collector_parser(_k8s_literal_env("collector")).parse_args([])
    assert args.node_name == "node-a"
    assert args.topic_prefix == "flowscope"

    args = enricher_parser(_k8s_literal_env("enricher")).parse_args(["join"])
    assert args.bootstrap_servers == "kafka.kafka.svc.cluster.local:9092"
    assert args.holdback_seconds == 5.0
    enricher_parser(_k8s_literal_env("metadata-publisher")).parse_args(["publish"])

    for key, value in _k8s_literal_env("processors").items():
        monkeypatch.setenv(key, value)
    args = processors_parser().parse_args(["worker"])
    assert args.window_seconds == 10.0
    assert str(args.state_dir) == "/var/lib/flowscope/state"


def _secret_keys() -> dict[str, str]:
    secret = _one("Secret", KAFKA_SECRET)
    assert "data" not in secret, "write the placeholders as stringData"
    keys: dict[str, str] = secret["stringData"]
    return keys


def _kafka_mount(name: str, workload: Obj) -> str:
    """Where the workload's pod mounts the Kafka Secret (read-only, not world-readable)."""
    pod = workload["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == KAFKA_SECRET]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, f"{name}: world-readable secret"
    (container,) = _containers(workload)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True, name
    path: str = mount["mountPath"]
    return path


def test_kafka_credentials_are_a_secret_mounted_read_only_where_the_settings_point() -> None:
    keys = _secret_keys()
    assert sorted(keys) == ["ca.crt", "password"]
    for cm in _of_kind("ConfigMap"):
        assert "FLOWSCOPE_KAFKA_SASL_PASSWORD" not in cm["data"], "a password in a ConfigMap"
        assert keys["password"] not in yaml.safe_dump(cm["data"])
    mounts = {name: _kafka_mount(name, workload) for name, workload in _workloads().items()}
    assert len(set(mounts.values())) == 1, mounts
    for name, workload in _workloads().items():
        (container,) = _containers(workload)
        env = _k8s_env(container)
        files = {
            k: v for k, v in env.items() if k.startswith("FLOWSCOPE_KAFKA_") and k.endswith("_FILE")
        }
        assert sorted(files) == [
            "FLOWSCOPE_KAFKA_SASL_PASSWORD_FILE",
            "FLOWSCOPE_KAFKA_SSL_CA_FILE",
        ]
        for key, value in files.items():
            assert value is not None, key
            directory, _, file_name = value.rpartition("/")
            assert directory == mounts[name], f"{name}: {key} is outside the mounted Secret"
            assert file_name in keys, f"{name}: {key} names no key of the Secret"


def test_compose_mounts_the_same_credentials_and_defaults_to_plaintext() -> None:
    (mount_path,) = {_kafka_mount(n, w) for n, w in _workloads().items()}
    for name in SERVICES:
        binds = [
            v
            for v in _compose_service(name)["volumes"]
            if isinstance(v, dict) and v["target"] == mount_path
        ]
        assert len(binds) == 1 and binds[0]["read_only"] is True, name
        env = _compose_env(name)
        for key in SECURITY_VALUES:
            # Overridable from `.env`; empty (plaintext) for the broker compose runs itself.
            assert env[key] == f"${{{key}:-}}", f"{name}: {key}"


def test_compose_instructions_for_a_secured_cluster_are_the_k8s_settings() -> None:
    """The `.env` lines compose's comment gives are the ConfigMap's values, paths included."""
    lines = re.findall(
        r"^ *#\s+(FLOWSCOPE_KAFKA_[A-Z_]+)=(\S+)$", COMPOSE_FILE.read_text(), re.MULTILINE
    )
    instructed = dict(lines)
    assert instructed.pop("FLOWSCOPE_KAFKA_CREDENTIALS_DIR")
    assert "FLOWSCOPE_KAFKA_CREDENTIALS_DIR" in COMPOSE_FILE.read_text().split("services:")[0]
    shared = _one("ConfigMap", "flowscope-config")["data"]
    assert instructed == {k: shared[k] for k in SECURITY_VALUES}


def test_security_settings_are_accepted_with_the_secret_mounted(tmp_path: Path) -> None:
    """The ConfigMap's values and the Secret's files, read as every service reads them."""
    from flowscope import kafka_security

    shared = _one("ConfigMap", "flowscope-config")["data"]
    (mount_path,) = {_kafka_mount(n, w) for n, w in _workloads().items()}
    for key, value in _secret_keys().items():
        (tmp_path / key).write_text(value)
    env = {
        k: v.replace(mount_path, str(tmp_path)) for k, v in shared.items() if k in SECURITY_VALUES
    }
    security = kafka_security.from_env(env)
    assert security.protocol == "SASL_SSL" and security.tls and security.sasl
    assert security.password is not None
    assert security.password.reveal() == _secret_keys()["password"]
    assert _secret_keys()["password"] not in repr(security) + security.describe()
    assert security.librdkafka()["ssl.ca.location"] == str(tmp_path / "ca.crt")

    compose_env = {k: _compose_default(v) for k, v in _compose_env("enricher").items()}
    assert kafka_security.from_env(compose_env) == kafka_security.PLAINTEXT


METRICS_PORT_SETTING = {
    "collector": "FLOWSCOPE_COLLECTOR_METRICS_PORT",
    "metadata-publisher": "FLOWSCOPE_ENRICHER_METRICS_PORT",
    "enricher": "FLOWSCOPE_ENRICHER_METRICS_PORT",
    "processors": "FLOWSCOPE_PROCESSORS_METRICS_PORT",
}


def test_every_container_is_probed_where_its_service_serves_the_probes() -> None:
    for name, container in _all_containers():
        port = _k8s_env(container)[METRICS_PORT_SETTING[name]]
        (named,) = [p for p in container["ports"] if p["name"] == "metrics"]
        assert str(named["containerPort"]) == port, name
        for probe, path in (
            ("startupProbe", "/readyz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/livez"),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, (name, probe)
        # Liveness gives a stuck loop 30 s (flowscope/probes.py) plus the kubelet's retries.
        live = container["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] >= 30, name


def test_compose_asks_the_long_running_services_the_readiness_question() -> None:
    for name in ("collector", "enricher", "processors"):
        port = _compose_default(_compose_env(name)[METRICS_PORT_SETTING[name]])
        test = " ".join(_compose_service(name)["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in test, name
