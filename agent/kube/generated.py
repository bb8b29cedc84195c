"""The official generated client (`kubernetes`) as a KubeClient transport: for credentials agent/kube/rest.py
does not implement (exec and auth-provider plugins, proxies, insecure-skip-tls-verify, merged kubeconfigs).

Imported only when such credentials are used (or a test hands KubeClient an ApiClient), so a process on
plain credentials never loads the generated client.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from agent.errors import ConfigError


def load_api_client(kubeconfig: Path | None = None, context: str | None = None) -> k8s.ApiClient:
    """An ApiClient from --kubeconfig, else in-cluster (a pod's service account), else $KUBECONFIG/~/.kube/config."""
    configuration = k8s.Configuration()
    try:
        if kubeconfig is not None:
            if not kubeconfig.is_file():
                raise ConfigError(f"kubeconfig {kubeconfig} does not exist")
            k8s_config.load_kube_config(config_file=str(kubeconfig), context=context,
                                        client_configuration=configuration, persist_config=False)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(context=context, client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError, ValueError) as exc:
        raise ConfigError(f"cannot load Kubernetes credentials: {str(exc).splitlines()[0][:300]}") from None
    # Retries are ours (with backoff and a stop signal); urllib3's silent ones would stretch lease timing.
    configuration.retries = False
    return k8s.ApiClient(configuration)


def kubeconfig_namespace(kubeconfig: Path | None) -> str | None:
    """The active context's namespace, the generated client's way (it merges a multi-file $KUBECONFIG)."""
    try:
        _contexts, active = k8s_config.list_kube_config_contexts(str(kubeconfig) if kubeconfig else None)
    except (ConfigException, OSError, ValueError):
        return None
    namespace = (active or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else None


class ApiClientTransport:
    """Requests through a generated ApiClient (its auth settings, TLS, proxy and token refresh hooks)."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api

    def send_request(self, method: str, path: str, query: list[tuple[str, Any]], headers: dict[str, str],
                     body: Any, timeout: float | tuple[float, float]) -> urllib3.BaseHTTPResponse:
        request = self.api.param_serialize(method, path, query_params=query, header_params=headers, body=body,
                                           auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*request, _request_timeout=timeout)
        except ApiException as exc:  # the REST layer turns urllib3's SSLError into status 0: turn it back
            raise urllib3.exceptions.SSLError(str(exc.reason)[:200]) from None
        raw: urllib3.BaseHTTPResponse = response.response
        return raw

    def close(self) -> None:
        self.api.close()
