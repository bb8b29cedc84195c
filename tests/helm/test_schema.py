"""values.schema.json: wrong values fail `helm template` (and so `helm install`) with the path of the
offending value and what was expected, before anything reaches a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.conftest import Helm


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "replicaCount=two"], "at '/replicaCount': got string, want integer"),
    (["--set", "replicaCount=0"], "at '/replicaCount': minimum: got 0, want 1"),
    (["--set", "replicaCoutn=2"], "additional properties 'replicaCoutn' not allowed"),
    (["--set", "gateway.service.type=Public"], "at '/gateway/service/type': value must be one of 'ClusterIP', "
                                               "'NodePort', 'LoadBalancer'"),
    (["--set", "modelArtsServices[0].name=llm", "--set", "modelArtsServices[0].serviceType=LoadBalancer"],
     "at '/modelArtsServices/0/serviceType': value must be one of 'ClusterIP', 'Headless'"),
    (["--set", "modelArtsServices[0].name=llm", "--set", "modelArtsServices[0].pollInterval=soon"],
     "at '/modelArtsServices/0/pollInterval'"),
    (["--set", "modelArtsServices[0].serviceId=x"], "missing property 'name'"),
    (["--set", "controller.adminPort=70000"], "at '/controller/adminPort': maximum: got 70,000, want 65,535"),
    (["--set", "controller.logLevel=verbose"], "at '/controller/logLevel': value must be one of"),
    (["--set", "gateway.service.annotation.a=b"], "additional properties 'annotation' not allowed"),
    (["--set", "controller.xds.enabled=true"], "additional properties 'xds' not allowed"),
    (["--set", "gateway.services[0]=Not_A_Name"], "at '/gateway/services/0'"),
    (["--set", "networkPolicy.modelarts.cidrs[0]=everything"], "at '/networkPolicy/modelarts/cidrs/0'"),
    (["--set", "image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
], ids=["replicas-string", "replicas-zero", "unknown-top-level", "gateway-service-type", "cr-service-type",
        "cr-poll-interval", "cr-without-name", "port-range", "log-level", "unknown-nested", "controller-xds-is-gone",
        "gateway-service-name", "cidr", "pull-policy"])
def test_bad_values_fail_with_a_clear_message(helm: Helm, args: list[str], message: str) -> None:
    proc = helm.template(*args, check=False)
    assert proc.returncode != 0, proc.stdout[:500]
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_bad_values_file_fails_too(helm: Helm, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("replicaCount: \"two\"\ngateway:\n  service:\n    type: Bogus\n")
    proc = helm.template("-f", values, check=False)
    assert proc.returncode != 0
    assert "at '/replicaCount': got string, want integer" in proc.stderr
    assert "at '/gateway/service/type'" in proc.stderr
