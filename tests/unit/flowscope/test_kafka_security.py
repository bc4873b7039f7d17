"""Security settings: validated at start, mapped to librdkafka and aiokafka, never printed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from flowscope import kafka_security
from flowscope.kafka_security import KafkaSecurity, KafkaSecurityError, Secret, secured

PASSWORD = "hunter2-very-secret"


def _parse(env: dict[str, str], argv: list[str] | None = None) -> KafkaSecurity:
    parser = argparse.ArgumentParser()
    kafka_security.add_arguments(parser, env)
    return kafka_security.from_args(parser.parse_args(argv or []), env)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("not parsed here")
    return path


def test_default_is_plaintext_and_adds_nothing() -> None:
    assert _parse({}) == kafka_security.PLAINTEXT
    config = {"bootstrap.servers": "h:1", "acks": "all"}
    assert secured(config) == config


def test_sasl_ssl_from_env_and_password_file(tmp_path: Path, ca: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    env = {
        "FLOWSCOPE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "FLOWSCOPE_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "FLOWSCOPE_KAFKA_SASL_USERNAME": "svc",
        "FLOWSCOPE_KAFKA_SASL_PASSWORD_FILE": str(secret),
        "FLOWSCOPE_KAFKA_SSL_CA_FILE": str(ca),
    }
    security = _parse(env)
    assert security.librdkafka() == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca),
    }
    for text in (repr(security), str(security), security.describe()):
        assert PASSWORD not in text
    assert security.describe() == f"SASL_SSL, SCRAM-SHA-512 as svc, CA {ca}"


def test_password_from_env_is_never_an_option_or_a_help_default() -> None:
    env = {
        "FLOWSCOPE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FLOWSCOPE_KAFKA_SASL_MECHANISM": "PLAIN",
        "FLOWSCOPE_KAFKA_SASL_USERNAME": "svc",
        "FLOWSCOPE_KAFKA_SASL_PASSWORD": PASSWORD,
    }
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    kafka_security.add_arguments(parser, env)
    assert PASSWORD not in parser.format_help()
    assert "--kafka-sasl-password " not in parser.format_help()
    security = kafka_security.from_args(parser.parse_args([]), env)
    assert security.password == Secret(PASSWORD)
    assert "ssl.ca.location" not in security.librdkafka()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"protocol": "TLS"}, "is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"protocol": "SASL_SSL", "username": "u", "password": Secret("p")}, "SASL mechanism"),
        ({"protocol": "SASL_SSL", "mechanism": "GSSAPI", "username": "u"}, "SCRAM-SHA-512"),
        ({"protocol": "SASL_SSL", "mechanism": "PLAIN", "username": "u"}, "a password"),
        ({"mechanism": "PLAIN"}, "use SASL_SSL or SASL_PLAINTEXT"),
        ({"ca_file": Path("/etc/hostname")}, "use SSL or SASL_SSL"),
        ({"protocol": "SSL", "cert_file": Path("/etc/hostname")}, "needs both"),
        ({"protocol": "SSL", "ca_file": Path("/nonexistent/ca.pem")}, "not a readable file"),
    ],
)
def test_incomplete_settings_fail_naming_the_fix(values: dict[str, object], message: str) -> None:
    with pytest.raises(KafkaSecurityError, match=message):
        KafkaSecurity(**values)  # type: ignore[arg-type]


def test_unreadable_password_file_names_the_file(tmp_path: Path) -> None:
    env = {"FLOWSCOPE_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")}
    with pytest.raises(KafkaSecurityError, match=r"cannot read the password file .*missing"):
        _parse(env)


def test_registration_is_per_cluster_and_the_callers_dict_is_kept(ca: Path) -> None:
    security = KafkaSecurity(protocol="SSL", ca_file=ca)
    kafka_security.register("b:2, a:1", security)
    try:
        config = {"bootstrap.servers": "a:1,b:2", "group.id": "g"}
        merged = secured(config)
        assert merged == {**config, "security.protocol": "ssl", "ssl.ca.location": str(ca)}
        assert config == {"bootstrap.servers": "a:1,b:2", "group.id": "g"}
        assert secured({"bootstrap.servers": "c:3"}) == {"bootstrap.servers": "c:3"}
    finally:
        kafka_security.register("a:1,b:2", kafka_security.PLAINTEXT)


def test_tls_context_for_aiokafka_checks_names(tmp_path: Path) -> None:
    from devbroker.tls import ensure_tls

    files = ensure_tls(tmp_path / "tls")
    security = KafkaSecurity(
        protocol="SSL",
        ca_file=files.ca_cert,
        cert_file=files.client_cert,
        key_file=files.client_key,
    )
    context = security.ssl_context()
    assert context is not None and context.check_hostname
    credentials = security.faust_credentials()
    assert credentials.protocol.value == "SSL"
    sasl = KafkaSecurity(
        protocol="SASL_SSL",
        mechanism="SCRAM-SHA-256",
        username="u",
        password=Secret(PASSWORD),
        ca_file=files.ca_cert,
    )
    creds = sasl.faust_credentials()
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-256")
    assert PASSWORD not in repr(creds)
