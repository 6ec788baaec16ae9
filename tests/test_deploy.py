"""deploy/: the example configuration parses, and the deployment files agree with it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from receiver.config import Config, parse_config
from receiver.http.connections import RESERVED_DESCRIPTORS

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ENV = {
    "BAOFOO_MD5_KEY": "not-a-real-key",
    "GOPAY_API_KEY": "not-a-real-api-key",
    "SHOP_WEBHOOK_SECRET": "whsec_bm90LWEtcmVhbC13ZWJob29rLXNlY3JldC0zMmJ5dGVz",
}

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML is optional
    yaml = None


def parse_deploy_config(data: dict[str, Any], *, source: str, environ: dict[str, str]) -> Config:
    """parse_config on a deploy file, as the service reads it."""
    return parse_config(data, source=source, base=DEPLOY, environ=environ)


def example_config(environ: dict[str, str] = ENV) -> Config:
    path = DEPLOY / "receiver.toml.example"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return parse_deploy_config(data, source=str(path), environ=environ)


def test_example_config_runs_the_whole_product() -> None:
    """Order queries and forwarding are configured, not only notifications."""
    config = example_config()
    assert config.gopay.api_url and config.baofoo.query_url
    [gopay] = config.gopay.merchants
    assert gopay.private_key == Path("/etc/receiver/keys/gopay-100001-merchant.pem")
    assert gopay.api_key == ENV["GOPAY_API_KEY"]
    data = tomllib.loads((DEPLOY / "receiver.toml.example").read_text(encoding="utf-8"))
    [shop] = data["forward"]
    assert shop["name"] == "shop" and shop["secret_env"] == "SHOP_WEBHOOK_SECRET"
    assert shop["url"].startswith("https://CHANGE-ME")


def test_example_config_parses_for_production() -> None:
    config = example_config()
    assert config.log.format == "json"
    assert config.database.url == ""  # the URL comes from RECEIVER_DATABASE_URL
    assert [str(n) for n in config.server.trusted_proxies] == ["127.0.0.1/32", "::1/128"]
    assert config.gopay.allowed_ips == () and config.baofoo.allowed_ips == ()
    [gopay] = config.gopay.merchants
    assert all(
        p.is_absolute() and p.parent == Path("/etc/receiver/keys")
        for p in gopay.platform_public_keys
    )
    [baofoo] = config.baofoo.merchants
    assert baofoo.md5_key == ENV["BAOFOO_MD5_KEY"]
    assert config.server.tls_cert is None  # nginx terminates TLS


def test_example_config_takes_the_database_url_from_the_environment() -> None:
    url = "postgresql://receiver@db.internal:5432/receiver"
    assert example_config({**ENV, "RECEIVER_DATABASE_URL": url}).database.url == url


def test_example_config_needs_the_md5_key_variable() -> None:
    without = {k: v for k, v in ENV.items() if k != "BAOFOO_MD5_KEY"}
    with pytest.raises(Exception, match="BAOFOO_MD5_KEY"):
        example_config(without)


def _k8s_deployment() -> dict[str, Any]:
    text = (DEPLOY / "k8s" / "deployment.yaml").read_text(encoding="utf-8")
    if yaml is not None:
        return yaml.safe_load(text)
    return _deployment_without_yaml(text)


def _deployment_without_yaml(text: str) -> dict[str, Any]:
    """The few fields the tests need, read line by line (the file's layout is ours)."""

    def after(key: str, start: int = 0) -> tuple[str, int]:
        match = re.compile(rf"^[ \t]*{key}:[ \t]*(\S*)", re.M).search(text, start)
        assert match, key
        return match.group(1), match.end()

    def probe(name: str) -> dict[str, Any]:
        _, at = after(name)
        path, at = after("path", at)
        port, _ = after("port", at)
        return {"httpGet": {"path": path, "port": int(port) if port.isdigit() else port}}

    port_name, at = after("- name", after("ports")[1])
    container_port, _ = after("containerPort", at)
    grace, _ = after("terminationGracePeriodSeconds")
    return {
        "spec": {
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": int(grace),
                    "containers": [
                        {
                            "ports": [{"name": port_name, "containerPort": int(container_port)}],
                            "readinessProbe": probe("readinessProbe"),
                            "livenessProbe": probe("livenessProbe"),
                        }
                    ],
                }
            }
        }
    }


def _k8s_config() -> Config:
    text = (DEPLOY / "k8s" / "configmap.yaml").read_text(encoding="utf-8")
    if yaml is not None:
        toml = yaml.safe_load(text)["data"]["receiver.toml"]
    else:
        block = text.split("receiver.toml: |\n", 1)[1]
        toml = "\n".join(line.removeprefix("    ") for line in block.splitlines())
    return parse_deploy_config(tomllib.loads(toml), source="configmap.yaml", environ=ENV)


def test_k8s_probes_use_the_container_port_and_the_grace_period_outlasts_shutdown() -> None:
    config = _k8s_config()
    pod = _k8s_deployment()["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert config.server.port in ports.values()

    def target(probe: dict[str, Any]) -> tuple[str, int]:
        port = probe["httpGet"]["port"]
        return probe["httpGet"]["path"], ports[port] if isinstance(port, str) else port

    assert target(container["readinessProbe"]) == ("/readyz", config.server.port)
    assert target(container["livenessProbe"]) == ("/healthz", config.server.port)
    assert pod["terminationGracePeriodSeconds"] > config.server.shutdown_timeout_s
    assert pod["terminationGracePeriodSeconds"] > example_config().server.shutdown_timeout_s


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_k8s_runs_as_non_root_with_secrets_from_a_secret() -> None:
    pod = _k8s_deployment()["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    from_secret = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert from_secret == {
        "RECEIVER_DATABASE_URL",
        "BAOFOO_MD5_KEY",
        "GOPAY_API_KEY",
        "SHOP_WEBHOOK_SECRET",
    }
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    assert all("PLACEHOLDER" in value for value in secret["stringData"].values())


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK\b.*/healthz", text, re.M | re.S)
    assert re.search(r"^EXPOSE\s+8080\b", text, re.M)
    cmd = re.findall(r"^CMD\s+(.*)$", text, re.M)[-1]
    assert cmd == (
        '["receiver", "serve", "--config", "/etc/receiver/receiver.toml", "--host", "0.0.0.0"]'
    )


def _systemd_seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_systemd_stop_timeout_outlasts_shutdown() -> None:
    text = (DEPLOY / "receiver.service").read_text(encoding="utf-8")
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert _systemd_seconds(settings["TimeoutStopSec"]) > (
        example_config().server.shutdown_timeout_s
    )
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["Type"] == "exec"
    assert settings["ExecStart"].endswith("serve --config /etc/receiver/receiver.toml")
    assert settings["User"] not in {"root", "0"}


def test_systemd_unit_gives_descriptors_for_every_connection() -> None:
    text = (DEPLOY / "receiver.service").read_text(encoding="utf-8")
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    server = example_config().server
    assert int(settings["LimitNOFILE"]) >= server.max_connections + RESERVED_DESCRIPTORS


def test_nginx_site_limits_slow_clients_and_passes_the_client_address() -> None:
    text = (DEPLOY / "nginx" / "receiver.conf").read_text(encoding="utf-8")
    assert re.search(r"^\s*client_body_timeout\s+\d+s;", text, re.M)
    assert re.search(r"^\s*client_header_timeout\s+\d+s;", text, re.M)
    assert re.search(r"^\s*client_max_body_size\s+64k;", text, re.M)
    assert re.search(
        r"^\s*proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;", text, re.M
    )
    assert re.search(r"^\s*ssl_protocols\s+TLSv1\.2 TLSv1\.3;", text, re.M)
    locations = re.findall(r"^\s*location\s+(.*?)\s*\{", text, re.M)
    assert sorted(locations) == ["/", "/notify/", "= /healthz", "= /readyz"]


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_k8s_cronjob_runs_one_reconcile_pass_like_the_deployment() -> None:
    job = yaml.safe_load((DEPLOY / "k8s" / "cronjob.yaml").read_text(encoding="utf-8"))
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == [
        "receiver",
        "reconcile",
        "--config",
        "/etc/receiver/receiver.toml",
    ]
    deployment = _k8s_deployment()["spec"]["template"]["spec"]
    [served] = deployment["containers"]
    assert container["env"] == served["env"]  # the same database and secrets
    assert container["image"] == served["image"]
    assert pod["volumes"] == deployment["volumes"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["restartPolicy"] == "Never"


def test_k8s_exposes_the_metrics_listener_for_scraping_apart_from_the_gateways_port() -> None:
    config = _k8s_config()
    assert config.metrics.port and config.metrics.port != config.server.port
    assert config.metrics.host == "0.0.0.0"
    if yaml is None:
        pytest.skip("PyYAML is not installed")
    template = _k8s_deployment()["spec"]["template"]
    [container] = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == config.metrics.port
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.metrics.port)
    assert annotations["prometheus.io/path"] == "/metrics"
