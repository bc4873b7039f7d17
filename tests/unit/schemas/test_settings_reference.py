"""docs/settings.md is what the declarations generate, every variable the deployments set is
a declared setting of the service it is set for, and one spelling holds across commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from flowscope import kafka_security, reference
from flowscope.__main__ import main as flowscope_main
from flowscope.settings import items

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Deployment name (k8s workload == compose service) -> the section(s) of its command.
SERVICES = {
    "collector": ["Collector"],
    "metadata-publisher": ["Enricher: publish"],
    "enricher": ["Enricher: join"],
    "processors": ["Processors"],
}
EVERY_COMMAND = "Kafka connection"


def _declared(title: str) -> set[str]:
    (section,) = [s for s in reference.sections() if s.title == title]
    return {
        i.spec.env
        for i in items(section.cls)
        if i.spec.env and (not i.spec.commands or set(i.spec.commands) & set(section.only))
    }


def _for_service(name: str) -> set[str]:
    found = _declared(EVERY_COMMAND)
    for title in SERVICES[name]:
        found |= _declared(title)
    return found


def test_the_committed_reference_is_the_generated_one() -> None:
    committed = reference.DEFAULT_PATH.read_text(encoding="utf-8")
    assert committed == reference.generate(), (
        "docs/settings.md is stale; run `python -m flowscope settings-doc`"
    )
    assert flowscope_main(["settings-doc", "--check"]) == 0


def test_check_fails_on_an_edited_or_missing_reference(tmp_path: Path) -> None:
    output = tmp_path / "settings.md"
    assert flowscope_main(["settings-doc", "--output", str(output), "--check"]) == 1
    assert flowscope_main(["settings-doc", "--output", str(output)]) == 0
    assert flowscope_main(["settings-doc", "--output", str(output), "--check"]) == 0
    output.write_text(output.read_text().replace("FLOWSCOPE_NODE_NAME", "FLOWSCOPE_NODE"))
    assert flowscope_main(["settings-doc", "--output", str(output), "--check"]) == 1


def _k8s_env() -> dict[str, set[str]]:
    docs = [
        d
        for p in sorted(K8S.glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text(encoding="utf-8"))
        if isinstance(d, dict)
    ]
    configmaps = {
        d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"
    }
    found: dict[str, set[str]] = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        names: set[str] = set()
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                names |= set(configmaps[source["configMapRef"]["name"]])
            names |= {entry["name"] for entry in container.get("env", [])}
        found[doc["metadata"]["name"]] = names
    return found


def _compose_env() -> dict[str, set[str]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return {
        name: set(service.get("environment") or {})
        for name, service in compose["services"].items()
        if name in SERVICES
    }


@pytest.mark.parametrize("style", ["k8s", "compose"])
def test_every_variable_the_deployments_set_is_a_declared_setting(style: str) -> None:
    deployed = _k8s_env() if style == "k8s" else _compose_env()
    assert set(deployed) == set(SERVICES)
    unknown = [
        f"{name}: {variable}"
        for name, variables in deployed.items()
        for variable in sorted(variables - _for_service(name))
    ]
    assert unknown == [], "set in the deployment but not a setting of that service"


def _rows(section: reference.Section) -> list[tuple[str, str | None, str]]:
    """(option, variable, help) of every setting of a section, however it is declared."""
    declared = (
        [(i.flag, i.spec.env, i.spec.help) for i in items(section.cls)] if section.cls else []
    )
    return declared + [(o.flag, o.env, o.help) for o in section.options]


def test_every_setting_has_one_option_and_one_variable_spelled_one_way() -> None:
    for section in reference.sections():
        rows = _rows(section)
        flags = [flag for flag, _, _ in rows if flag]
        variables = [env for _, env, _ in rows if env]
        assert len(flags) == len(set(flags)), section.title
        assert len(variables) == len(set(variables)), section.title
        for flag, env, text in rows:
            assert env is None or env.startswith("FLOWSCOPE_"), env
            # Durations are spelled out: --*-seconds and *_SECONDS, never -s or _S.
            assert not flag.endswith("-s"), flag
            assert not (env or "").endswith("_S"), env
            assert text, flag
        assert "FLOWSCOPE_LOG_LEVEL" in variables or section.title == "Kafka connection"


def test_the_same_concept_has_the_same_name_in_every_command() -> None:
    flags = {flag for section in reference.sections() for flag, _, _ in _rows(section)}
    assert "--group" in flags and "--app-id" not in flags and "--group-id" not in flags
    assert "--dns-enabled" in flags and "--dns" not in flags
    assert "--log-level" in {i.flag for i in items(_section("Processors").cls)}
    for title in ("Collector", "Enricher: join", "Processors", "Topics"):
        assert "FLOWSCOPE_LOG_LEVEL" in _declared(title), title


def _section(title: str) -> reference.Section:
    (section,) = [s for s in reference.sections() if s.title == title]
    return section


def test_a_secret_never_appears_in_help_or_reference() -> None:
    from collector.settings import build_parser

    key = "hash-key-do-not-print"
    text = build_parser({"FLOWSCOPE_DNS_NAME_HASH_KEY": key}).format_help()
    assert "FLOWSCOPE_DNS_NAME_HASH_KEY" in text
    assert key not in text
    assert key not in reference.generate()
    parser = argparse.ArgumentParser()
    kafka_security.add_arguments(parser, {"FLOWSCOPE_KAFKA_SASL_PASSWORD": key})
    assert key not in parser.format_help()
    assert key not in repr(parser.parse_args([]))
