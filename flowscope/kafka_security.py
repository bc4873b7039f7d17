"""How every flowscope client connects to a secured Kafka: TLS, SASL, certificates.

Given once (``FLOWSCOPE_KAFKA_*`` or the matching ``--kafka-*`` options, read by each
service's ``__main__`` through :func:`add_arguments` and :func:`from_args`) and applied to
every client: librdkafka's (producers, consumers, admin clients) through :func:`secured`,
and faust/aiokafka's through :meth:`KafkaSecurity.faust_credentials`.

Each ``__main__`` :func:`register`\\ s the settings for its bootstrap servers; the clients
made below it (many constructors, each taking a bootstrap string) look them up there, so
none of them grows a security parameter. A bootstrap string nobody registered connects in
plaintext, as before.

Secrets (the SASL password, a key's password) come from a file or the environment, never
from a command-line value (``ps`` shows those), and are held in :class:`Secret`, whose
``repr`` and ``str`` print a placeholder: a settings object in a log or a health record
never carries one.
"""

from __future__ import annotations

import argparse
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowscope import settings
from flowscope.settings import optional_path, optional_str, setting

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    """The security settings are incomplete or contradict each other; the message says how."""


class Secret:
    """A string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<hidden>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str | None = None  # SASL only
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # a client certificate (mutual TLS)
    key_file: Path | None = None
    key_password: Secret | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"security protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        if self.sasl:
            if self.mechanism not in MECHANISMS:
                raise KafkaSecurityError(
                    f"{self.protocol} needs a SASL mechanism ({ENV['mechanism']}), one of "
                    f"{', '.join(MECHANISMS)}; got {self.mechanism!r}"
                )
            if not self.username or self.password is None:
                raise KafkaSecurityError(
                    f"{self.protocol} needs a username ({ENV['username']}) and a password "
                    f"({ENV['password_file']} or {ENV['password']})"
                )
        elif self.mechanism or self.username or self.password is not None:
            raise KafkaSecurityError(
                f"a SASL mechanism, username or password was given but the security protocol "
                f"is {self.protocol}: use SASL_SSL or SASL_PLAINTEXT"
            )
        tls_files = (self.ca_file, self.cert_file, self.key_file)
        if not self.tls and any(tls_files):
            raise KafkaSecurityError(
                f"TLS files were given but the security protocol is {self.protocol}: "
                "use SSL or SASL_SSL"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise KafkaSecurityError(
                f"a client certificate needs both {ENV['cert_file']} and {ENV['key_file']}"
            )
        for path in tls_files:
            if path is not None and not path.is_file():
                raise KafkaSecurityError(f"{path} is not a readable file")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, str]:
        """The librdkafka properties (secrets included: hand them to a client, not a log)."""
        config = {"security.protocol": self.protocol.lower()}
        if self.sasl:
            assert self.mechanism and self.username and self.password is not None
            config["sasl.mechanism"] = self.mechanism
            config["sasl.username"] = self.username
            config["sasl.password"] = self.password.reveal()
        if self.ca_file is not None:
            config["ssl.ca.location"] = str(self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            config["ssl.certificate.location"] = str(self.cert_file)
            config["ssl.key.location"] = str(self.key_file)
            if self.key_password is not None:
                config["ssl.key.password"] = self.key_password.reveal()
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context aiokafka uses; it checks the broker's name as librdkafka does."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(
                self.cert_file,
                self.key_file,
                self.key_password.reveal() if self.key_password is not None else None,
            )
        return context

    def faust_credentials(self) -> Any:
        """faust's ``broker_credentials`` (None: plaintext)."""
        import faust

        if self.sasl:
            assert self.password is not None
            return faust.SASLCredentials(
                username=self.username,
                password=self.password.reveal(),
                ssl_context=self.ssl_context(),
                mechanism=self.mechanism,
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def describe(self) -> str:
        """One line for logs and error messages, without secrets."""
        parts = [self.protocol]
        if self.sasl:
            parts.append(f"{self.mechanism} as {self.username}")
        if self.tls:
            parts.append(f"CA {self.ca_file or 'system trust store'}")
            if self.cert_file is not None:
                parts.append(f"client certificate {self.cert_file}")
        return ", ".join(parts)


PLAINTEXT = KafkaSecurity()

_lock = threading.Lock()
_registered: dict[str, KafkaSecurity] = {}


def _key(bootstrap: str) -> str:
    return ",".join(sorted(server.strip() for server in bootstrap.split(",") if server.strip()))


def register(bootstrap: str, security: KafkaSecurity) -> None:
    """Every client of these bootstrap servers made through flowscope uses ``security``."""
    with _lock:
        _registered[_key(bootstrap)] = security


def for_bootstrap(bootstrap: str) -> KafkaSecurity:
    with _lock:
        return _registered.get(_key(bootstrap), PLAINTEXT)


def secured(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a librdkafka config with its cluster's security added (never mutated)."""
    security = for_bootstrap(str(config.get("bootstrap.servers", "")))
    if security.protocol == "PLAINTEXT":
        return dict(config)
    return {**security.librdkafka(), **config}


# -- settings at the edge -------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaSecurityOptions:
    """The settings as given; :meth:`security` reads the secret files and checks them."""

    protocol: str = setting(
        "PLAINTEXT",
        f"Kafka security protocol, one of {', '.join(PROTOCOLS)}",
        env="FLOWSCOPE_KAFKA_SECURITY_PROTOCOL",
        flag="--kafka-security-protocol",
        parse=str.upper,
    )
    mechanism: str | None = setting(
        None,
        f"SASL mechanism: {', '.join(MECHANISMS)}",
        env="FLOWSCOPE_KAFKA_SASL_MECHANISM",
        flag="--kafka-sasl-mechanism",
        parse=lambda text: text.upper() or None,
    )
    username: str | None = setting(
        None,
        "SASL user name",
        env="FLOWSCOPE_KAFKA_SASL_USERNAME",
        flag="--kafka-sasl-username",
        parse=optional_str,
    )
    # Never an option: `ps` shows a command line.
    password: Secret | None = setting(
        None,
        "the SASL password itself (prefer the password file)",
        env="FLOWSCOPE_KAFKA_SASL_PASSWORD",
        flag="",
        secret=True,
        parse=lambda text: Secret(text) if text else None,
    )
    password_file: Path | None = setting(
        None,
        "file holding the SASL password (or the password itself in "
        "FLOWSCOPE_KAFKA_SASL_PASSWORD; never an option)",
        env="FLOWSCOPE_KAFKA_SASL_PASSWORD_FILE",
        flag="--kafka-sasl-password-file",
        parse=optional_path,
    )
    ca_file: Path | None = setting(
        None,
        "PEM CA bundle to trust the brokers (none: the system's trust store)",
        env="FLOWSCOPE_KAFKA_SSL_CA_FILE",
        flag="--kafka-ssl-ca-file",
        parse=optional_path,
    )
    cert_file: Path | None = setting(
        None,
        "PEM client certificate (mutual TLS)",
        env="FLOWSCOPE_KAFKA_SSL_CERT_FILE",
        flag="--kafka-ssl-cert-file",
        parse=optional_path,
    )
    key_file: Path | None = setting(
        None,
        "PEM private key of the client certificate",
        env="FLOWSCOPE_KAFKA_SSL_KEY_FILE",
        flag="--kafka-ssl-key-file",
        parse=optional_path,
    )
    key_password_file: Path | None = setting(
        None,
        "file holding the private key's password, if it has one",
        env="FLOWSCOPE_KAFKA_SSL_KEY_PASSWORD_FILE",
        flag="--kafka-ssl-key-password-file",
        parse=optional_path,
    )

    def security(self) -> KafkaSecurity:
        """Raises KafkaSecurityError."""
        password = _read_secret(self.password_file, "password") or self.password
        return KafkaSecurity(
            protocol=self.protocol or "PLAINTEXT",
            mechanism=self.mechanism,
            username=self.username,
            password=password,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            key_password=_read_secret(self.key_password_file, "key password"),
        )


ENV = settings.env_names(KafkaSecurityOptions)


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The --kafka-* options, their defaults from the environment; no secret has an option."""
    settings.add_arguments(parser, KafkaSecurityOptions, env)


def _read_secret(path: Path | None, what: str) -> Secret | None:
    if path is None:
        return None
    try:
        return Secret(path.read_text().rstrip("\r\n"))
    except OSError as exc:
        reason = exc.strerror
        raise KafkaSecurityError(f"cannot read the {what} file {path}: {reason}") from None


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> KafkaSecurity:
    """The settings from parsed --kafka-* options (the parser took ``env`` already).
    Raises KafkaSecurityError."""
    options: KafkaSecurityOptions = settings.from_args(KafkaSecurityOptions, args)
    return options.security()


def from_env(env: Mapping[str, str]) -> KafkaSecurity:
    """The settings from the environment alone (for tools without a parser of their own)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser, env)
    return from_args(parser.parse_args([]), env)


# -- refusals ------------------------------------------------------------------------------

# librdkafka reports these through error_cb and then retries for ever: a client that waits
# for the cluster stops at the first one instead, naming the cause.
_REFUSALS = {
    "_AUTHENTICATION": "the credentials were refused",
    "SASL_AUTHENTICATION_FAILED": "the credentials were refused",
    "UNSUPPORTED_SASL_MECHANISM": "the SASL mechanism is not enabled on the broker",
    "ILLEGAL_SASL_STATE": "the broker does not speak SASL on this listener",
    "_SSL": "the TLS handshake failed",
}


class Refusal:
    """An error_cb that keeps the first refusal (bad credentials, untrusted certificate)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self.reason: str | None = None

    def on_error(self, err: Any) -> None:
        what = _REFUSALS.get(err.name())
        if what is None or self.reason is not None:
            return
        detail = err.str().split(" (after ")[0]  # librdkafka appends the timing
        security = for_bootstrap(self._bootstrap).describe()
        self.reason = f"Kafka at {self._bootstrap}: {what} ({security}): {detail}"
