"""The controller's per-Secret group config is built from typed parts: the CRs' specs as they are (no
round trip through a YAML-shaped dict and `parse_config`), and a bad value gives the error the YAML gave."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.config import AuthMode, BudgetConfig, DiscoveryConfig, ServiceSpec, parse_config
from agent.controller.crd import parse_resource
from agent.controller.credentials import SecretCredentials, parse_secret
from agent.controller.pipeline import GroupKey, PipelineSettings, group_config
from agent.errors import ConfigError
from tests.unit.test_kube_controller import secret
from tests.unit.test_kube_objects import cr

KEY = GroupKey("apps", "creds", "https://modelarts.example", "https://iam.example", "p", ("10.0.0.0/8",))
PASSWORD = parse_secret(secret(domain="acme", user="bob", password="s3cret-pass"))


def specs() -> list[ServiceSpec]:
    return [parse_resource(cr(protocol="grpc", pollInterval="2m")).service_spec(15),
            parse_resource({**cr(), "metadata": {"name": "embed", "namespace": "apps"}}).service_spec(15)]


def as_yaml_would(key: GroupKey, creds: SecretCredentials, specs: list[ServiceSpec],
                  settings: PipelineSettings) -> Any:
    """The same group written as a config file: what the controller used to build and parse."""
    return parse_config({
        "modelarts": {"iam_url": key.iam_url, "modelarts_url": key.modelarts_url, "project_id": key.project_id,
                      "timeout_seconds": settings.timeout_seconds},
        "auth": {"mode": creds.mode.value, "domain": creds.domain, "user": creds.user},
        "budget": settings.budget.model_dump(),
        "discovery": {**settings.discovery.model_dump(), "allowed_cidrs": list(key.allowed_cidrs)},
        "services": [s.model_dump() for s in specs],
    }, f"ModelArtsServices using Secret {key.namespace}/{key.secret}")


def test_the_group_config_holds_the_crs_specs_and_the_settings_as_they_are() -> None:
    settings = PipelineSettings(budget=BudgetConfig(per_user_per_minute=10),
                                discovery=DiscoveryConfig(stale_after_seconds=60))
    given = specs()
    config = group_config(KEY, PASSWORD, given, settings)
    assert all(got is spec for got, spec in zip(config.services, given, strict=True))
    # Only what the CR set counts as set (a round trip through model_dump marked every field set).
    assert [s.model_fields_set for s in config.services] == [s.model_fields_set for s in given]
    assert config.budget is settings.budget
    assert config.discovery.allowed_cidrs == KEY.allowed_cidrs and config.discovery.stale_after_seconds == 60
    assert (config.modelarts.modelarts_url, config.modelarts.iam_url, config.modelarts.project_id) == \
        (KEY.modelarts_url, KEY.iam_url, KEY.project_id)
    assert (config.auth.mode, config.auth.domain, config.auth.user) == (AuthMode.password, "acme", "bob")
    # The same config the YAML shape gave.
    assert config == as_yaml_would(KEY, PASSWORD, given, settings)


@pytest.mark.parametrize(("key", "creds", "settings", "duplicate", "field"), [
    (KEY, PASSWORD, PipelineSettings(timeout_seconds=500), False, "modelarts.timeout_seconds"),
    (KEY, replace(PASSWORD, user=None), PipelineSettings(), False, "auth: password auth needs"),
    (replace(KEY, allowed_cidrs=("10.0.0.1/8",)), PASSWORD, PipelineSettings(), False, "discovery.allowed_cidrs"),
    (KEY, PASSWORD, PipelineSettings(), True, "(top level): duplicate service names: apps--llm"),
])
def test_a_bad_value_gives_the_error_the_yaml_gave(key: GroupKey, creds: SecretCredentials,
                                                   settings: PipelineSettings, duplicate: bool, field: str) -> None:
    given = specs() + specs()[:1] if duplicate else specs()
    with pytest.raises(ConfigError) as before:
        as_yaml_would(key, creds, given, settings)
    with pytest.raises(ConfigError) as now:
        group_config(key, creds, given, settings)
    assert str(now.value) == str(before.value)
    assert str(now.value).startswith("invalid configuration in ModelArtsServices using Secret apps/creds:")
    assert field in str(now.value)


@pytest.mark.parametrize(("obj", "field"), [
    (cr(pollInterval="120m"), "spec.pollInterval: must be at most 60m"),
    ({**cr(), "metadata": {"name": "llm.v2", "namespace": "apps"}}, "metadata.name: must be a DNS label"),
])
def test_a_cr_that_passes_the_schema_but_fits_no_service_spec_is_refused_alone(obj: dict[str, Any],
                                                                             field: str) -> None:
    """Both pass the CRD's schema; building their ServiceSpec raised in reconcile, for every CR at once."""
    with pytest.raises(ConfigError) as info:
        parse_resource(obj).service_spec(15)
    assert field in str(info.value) and str(info.value).startswith("ModelArtsService apps/")
