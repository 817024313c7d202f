"""Where shared secrets come from: a Kubernetes Secret in the agents' namespace, or, in
standalone mode, the file ``<secrets dir>/<name>/<key>`` (the layout of a Secret mounted as
a volume). Never from a custom resource."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Protocol

from bng_operator.api.radius import SecretRef


class SecretError(ValueError):
    """A secret cannot be read; the message says which and why."""


class Secrets(Protocol):
    def read(self, ref: SecretRef) -> bytes:
        """The secret's bytes (a trailing newline stripped). Raises SecretError."""

    def describe(self, ref: SecretRef) -> str: ...


class FileSecrets:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, ref: SecretRef) -> str:
        return str(self.root / ref.name / ref.key)

    def read(self, ref: SecretRef) -> bytes:
        path = self.root / ref.name / ref.key
        try:
            value = path.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise SecretError(f"secret file {path}: {e.strerror or e} (--secrets-dir holds "
                              "<name>/<key>, as a mounted Secret does)") from e
        if not value:
            raise SecretError(f"secret file {path} is empty")
        return value


class KubeSecrets:
    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    def describe(self, ref: SecretRef) -> str:
        return f"Secret {self.namespace}/{ref.name} key {ref.key}"

    def read(self, ref: SecretRef) -> bytes:
        from kubernetes.client.exceptions import ApiException

        where = self.describe(ref)
        try:
            secret = self.core.read_namespaced_secret(ref.name, self.namespace,
                                                      _request_timeout=10)
        except ApiException as e:
            raise SecretError(f"{where}: {e.status} {e.reason}") from e
        except Exception as e:  # unreachable apiserver: said, never a traceback
            raise SecretError(f"{where}: {e}") from e
        data = (secret.data or {}).get(ref.key)
        if not data:
            raise SecretError(f"{where}: no such key, or it is empty")
        return base64.b64decode(data).rstrip(b"\r\n")
