"""A Kafka broker and a Redis of a test's own, on free ports, for it to kill and restart.

The broker is template/scripts/kafka.sh (what a generated service's `make services` runs) pointed
at its own ports and run directory; Redis is Debian's redis-server (installed by
template/scripts/redis.sh), run in the foreground as a child of the test.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import redis

from .helpers import ROOT
from .served import free_port, until


class OwnKafka:
    """A single KRaft node whose data survives `kill()` and `start()`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        port = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "BFF_RUN_DIR": str(run_dir),
        }

    def _script(self, command: str) -> None:
        done = subprocess.run(
            [ROOT / "template/scripts/kafka.sh", command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        # kafka.sh's own words (and, on a failed start, the broker log's last lines) go into the
        # error itself: a report that shows only the exception still says why.
        if done.returncode != 0:
            raise RuntimeError(
                f"kafka.sh {command} exited {done.returncode} with {self.bootstrap}:\n"
                f"{done.stdout}{done.stderr}"
            )

    def start(self) -> None:
        self._script("start")

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would leave it."""
        pid = int((self.run_dir / "kafka/kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        until(lambda: not Path(f"/proc/{pid}").exists(), within=30)

    def clean(self) -> None:
        self._script("clean")


class OwnRedis:
    """redis-server on a free port; `persistent` keeps an append-only file (fsync every second)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(
        self,
        *,
        persistent: bool = True,
        password: str | None = None,
        tls: "Certificates | None" = None,
        user: tuple[str, str] | None = None,
    ) -> None:
        """`tls`: only a TLS port, asking clients for a certificate; `user`: an ACL user (name,
        password) allowed everything, and the default user disabled."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if tls is not None:
            self.url = f"rediss://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                *(["--port", "0", "--tls-port"] if tls else ["--port"]), str(self.port),
                *(
                    [
                        "--tls-cert-file", str(tls.server_cert),
                        "--tls-key-file", str(tls.server_key),
                        "--tls-ca-cert-file", str(tls.ca),
                        "--tls-auth-clients", "yes",
                    ]
                    if tls else []
                ),
                *(
                    ["--user", user[0], "on", f">{user[1]}", "~*", "&*", "+@all",
                     "--user", "default", "off"]
                    if user else []
                ),
                "--dir", str(self.data_dir),
                "--save", "",
                "--appendonly", "yes" if persistent else "no",
                "--appendfsync", "everysec",
                "--hash-max-listpack-entries", "512",
                "--hash-max-listpack-value", "1024",
                *(["--requirepass", password] if password else []),
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        username, password = user if user else (None, password)
        if tls is None:
            client = redis.Redis(port=self.port, username=username, password=password)
        else:
            client = redis.Redis(
                port=self.port,
                username=username,
                password=password,
                ssl=True,
                ssl_ca_certs=str(tls.ca),
                ssl_certfile=str(tls.client_cert),
                ssl_keyfile=str(tls.client_plain_key),
            )
        until(lambda: self._answers(client), within=20)
        client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: what was not yet fsynced to the append-only file is lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def wipe(self) -> None:
        """Forget everything, as a Redis without persistence does when it restarts."""
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Certificates:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, in PEM files.

    The client key is encrypted with `key_password`, as a key handed out by a managed service may
    be; the server key is not (Kafka and Redis read it unattended).
    """

    key_password = "client-key-pass"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca = directory / "ca.pem"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=directory,
        )  # fmt: skip
        # Clients check the host name: the server certificate names the address they dial.
        (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self.server_cert, self.server_key = self._issue("server", "server.ext")
        self.client_cert, self.client_plain_key = self._issue("client", None)
        self.client_key = directory / "client-encrypted.key"
        _openssl(
            "pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{self.key_password}",
            "-out", self.client_key.name, cwd=directory,
        )  # fmt: skip
        # Kafka reads its key and certificate from one PKCS12 keystore.
        self.server_keystore = directory / "server.p12"
        _openssl(
            "pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-passout",
            "pass:keystore-pass", "-out", self.server_keystore.name, cwd=directory,
        )  # fmt: skip

    def _issue(self, name: str, extensions: str | None) -> tuple[Path, Path]:
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=self.dir,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
            *(["-extfile", extensions] if extensions else []), cwd=self.dir,
        )  # fmt: skip
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"


class SecureKafka(OwnKafka):
    """OwnKafka with two more listeners: SSL requiring a client certificate (mutual TLS) and
    SASL_SSL offering PLAIN and both SCRAMs. The PLAINTEXT one stays for the test's own clients.

    PLAIN users live in the listener's JAAS line; SCRAM ones are written at format time.
    """

    users: ClassVar[dict[str, str]] = {
        "PLAIN": "plainuser",
        "SCRAM-SHA-256": "scram256user",
        "SCRAM-SHA-512": "scram512user",
    }

    def __init__(self, run_dir: Path, certs: Certificates) -> None:
        super().__init__(run_dir)
        self.ssl_bootstrap = f"127.0.0.1:{free_port()}"
        self.sasl_bootstrap = f"127.0.0.1:{free_port()}"
        plain = self.bootstrap
        controller = f"127.0.0.1:{self.env['KAFKA_CONTROLLER_PORT']}"
        plain_user = self.users["PLAIN"]
        fragment = run_dir / "secure.properties"
        run_dir.mkdir(parents=True, exist_ok=True)
        fragment.write_text(
            f"listeners=PLAINTEXT://{plain},SSL://{self.ssl_bootstrap},"
            f"SASL_SSL://{self.sasl_bootstrap},CONTROLLER://{controller}\n"
            f"advertised.listeners=PLAINTEXT://{plain},SSL://{self.ssl_bootstrap},"
            f"SASL_SSL://{self.sasl_bootstrap}\n"
            "listener.security.protocol.map="
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL\n"
            "ssl.keystore.type=PKCS12\n"
            f"ssl.keystore.location={certs.server_keystore}\n"
            "ssl.keystore.password=keystore-pass\n"
            "ssl.truststore.type=PEM\n"
            f"ssl.truststore.location={certs.ca}\n"
            "listener.name.ssl.ssl.client.auth=required\n"
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n"
            "listener.name.sasl_ssl.plain.sasl.jaas.config="
            "org.apache.kafka.common.security.plain.PlainLoginModule required"
            f' user_{plain_user}="{self.password(plain_user)}";\n'
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        )
        scram = [
            f"--add-scram {mechanism}=[name={user},password={self.password(user)}]"
            for mechanism, user in self.users.items()
            if mechanism.startswith("SCRAM")
        ]
        self.env |= {"KAFKA_EXTRA_CONFIG": str(fragment), "KAFKA_FORMAT_ARGS": " ".join(scram)}

    @staticmethod
    def password(user: str) -> str:
        return f"{user}-secret"


KAFKA_SCRIPT = ROOT / "template/scripts/kafka.sh"


def kafka_libs() -> Path:
    """The Kafka jars kafka.sh fetched: the broker's, and its tools'."""
    [version] = re.findall(r"^KAFKA_VERSION=(\S+)", KAFKA_SCRIPT.read_text(), flags=re.MULTILINE)
    cache = Path(os.environ.get("BFF_CACHE_DIR") or Path.home() / ".cache/bff-template")
    return cache / f"kafka-{version}/libs"


class AuthorizingKafka(OwnKafka):
    """OwnKafka with Kafka's standard authorizer and a SASL_PLAINTEXT listener (PLAIN) where each of
    `users` logs in as `User:<name>` and may do only what ACLs allow it; a resource no ACL names
    is refused to all (allow.everyone.if.no.acl.found=false).

    The PLAINTEXT listener stays for the test's own clients and kafka.sh's readiness check, and the
    controller listener for the node itself: both connect as User:ANONYMOUS, a super user here.
    """

    def __init__(self, run_dir: Path, users: Iterable[str]) -> None:
        super().__init__(run_dir)
        self.users = list(users)
        self.sasl_bootstrap = f"127.0.0.1:{free_port()}"
        plain = self.bootstrap
        controller = f"127.0.0.1:{self.env['KAFKA_CONTROLLER_PORT']}"
        logins = " ".join(f'user_{user}="{self.password(user)}"' for user in self.users)
        fragment = run_dir / "authorizing.properties"
        run_dir.mkdir(parents=True, exist_ok=True)
        fragment.write_text(
            f"listeners=PLAINTEXT://{plain},SASL_PLAINTEXT://{self.sasl_bootstrap},"
            f"CONTROLLER://{controller}\n"
            f"advertised.listeners=PLAINTEXT://{plain},SASL_PLAINTEXT://{self.sasl_bootstrap}\n"
            "listener.security.protocol.map="
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT\n"
            "sasl.enabled.mechanisms=PLAIN\n"
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {logins};\n"
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
            "allow.everyone.if.no.acl.found=false\n"
            "super.users=User:ANONYMOUS\n"
        )
        self.env |= {"KAFKA_EXTRA_CONFIG": str(fragment)}

    @staticmethod
    def password(user: str) -> str:
        return f"{user}-secret"

    def client_env(self, user: str) -> dict[str, str]:
        """A generated service's settings logging in as `user`."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.sasl_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": user,
            "KAFKA_SASL_PASSWORD": self.password(user),
        }

    def client_options(self, user: str) -> dict[str, str]:
        """aiokafka options logging in as `user`."""
        return {
            "bootstrap_servers": self.sasl_bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": user,
            "sasl_plain_password": self.password(user),
        }

    def kafka_acls(self, lines: Iterable[str]) -> None:
        """Run `kafka-acls.sh ...` command lines, as printed, with Kafka's own tool from the jars
        (org.apache.kafka.tools.AclCommand), a few at a time; each must succeed."""
        commands = []
        for line in lines:
            words = shlex.split(line)
            if words[:1] != ["kafka-acls.sh"]:
                raise ValueError(f"not a kafka-acls.sh command: {line!r}")
            commands.append(words[1:])
        tool = [
            "java", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={self.run_dir / 'kafka/log4j2.properties'}",
            "-cp", f"{kafka_libs()}/*", "org.apache.kafka.tools.AclCommand",
        ]  # fmt: skip

        def add(args: list[str]) -> None:
            done = subprocess.run(
                [*tool, *args], capture_output=True, text=True, timeout=120, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"AclCommand {shlex.join(args)}:\n{done.stdout}{done.stderr}")

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(add, commands))
