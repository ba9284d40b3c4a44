#!/usr/bin/env bash
# Offline checks of deploy/: Kubernetes manifests against the API schemas, the Prometheus
# rules and their unit tests, the scrape config, the Helm chart's files, the Grafana
# dashboard, and every metric name they use against the families fathom exports.
#
#   deploy/check.sh                       # one line per check; exit 1 if any failed
#   FATHOM_BIN=target/debug/fathom deploy/check.sh
#                                         # also scrape a real `fathom serve` (root) and
#                                         # compare its families with the source parse
#
# Needs python3, curl and promtool (apt `prometheus`); PyYAML and kubernetes-validate come
# from PyPI into target/deploy-check-venv when the python3 on PATH lacks them (Debian:
# apt `python3-venv`). A missing tool is a failure, not a skip.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Relative to the caller's directory, before we move.
if [[ -n "${FATHOM_BIN:-}" ]]; then
    FATHOM_BIN="$(realpath -m "$FATHOM_BIN")"
fi
cd "$DEPLOY"
# Oldest Kubernetes the manifests must work on, and the newest the schemas know.
K8S_MIN=1.29.0
KUBERNETES_VALIDATE_VERSION=1.37.0

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0
skipped=0

# check NAME COMMAND…: runs COMMAND; prints "ok   NAME: <its last output line>" or
# "FAIL NAME" followed by its output, indented.
check() {
    local name="$1"
    shift
    local out="$TMP/out"
    if "$@" >"$out" 2>&1; then
        local last
        last="$(grep -v '^[[:space:]]*$' "$out" | tail -n 1 | sed 's/^[[:space:]]*//' || true)"
        echo "ok   $name${last:+: $last}"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        sed 's/^/       /' "$out"
        failed=$((failed + 1))
    fi
}

skip() {
    echo "skip $1"
    skipped=$((skipped + 1))
}

# python3 with PyYAML and kubernetes-validate: the one on PATH when it has both, else a
# private venv under target/ (Debian's python3 refuses `pip install` outside one).
PY=python3
setup_python() {
    if python3 -c 'import yaml, kubernetes_validate' 2>/dev/null; then
        return 0
    fi
    local venv="$DEPLOY/../target/deploy-check-venv"
    if ! "$venv/bin/python" -c 'import yaml, kubernetes_validate' 2>/dev/null; then
        python3 -m venv "$venv" >"$TMP/venv.log" 2>&1 || {
            echo "cannot create $venv (apt-get install python3-venv): $(tail -n 1 "$TMP/venv.log")"
            return 1
        }
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$TMP/pip.log" 2>&1 || {
            echo "pip install kubernetes-validate failed: $(tail -n 1 "$TMP/pip.log")"
            return 1
        }
    fi
    PY="$(cd "$venv" && pwd)/bin/python"
}

need_tools() {
    local missing=()
    command -v python3 >/dev/null || missing+=(python3)
    command -v promtool >/dev/null || missing+=("promtool (apt-get install prometheus)")
    command -v curl >/dev/null || missing+=("curl")
    if ((${#missing[@]})); then
        printf 'missing: %s\n' "${missing[@]}"
        return 1
    fi
    setup_python || return 1
    echo "$PY, promtool $(promtool --version 2>&1 | head -n 1 | awk '{print $3}'), kubernetes-validate $("$PY" -m kubernetes_validate --version 2>&1 | tail -n 1)"
}

# kubernetes-validate exits 0 with a WARN for a kind it has no schema for: treat any
# warning as a failure, so an object can never pass unchecked.
k8s_validate() {
    local version="$1" file="$2"
    "$PY" -m kubernetes_validate --strict --kubernetes-version "$version" "$file" >"$TMP/kv" 2>&1 || {
        cat "$TMP/kv"
        return 1
    }
    if grep -qv '^INFO .* passed for resource' "$TMP/kv"; then
        cat "$TMP/kv"
        return 1
    fi
    echo "$(grep -c passed "$TMP/kv") objects valid (strict) for Kubernetes $version"
}

newest_schema() {
    "$PY" - <<'EOF'
import os, re, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
v = [tuple(map(int, m.groups())) for n in os.listdir(d) if (m := re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", n))]
print(".".join(map(str, max(v))))
EOF
}

# promtool check config on the scrape config; Debian's promtool is built without
# Kubernetes discovery, so then the kubernetes_sd_configs are checked by checks.py and the
# rest of the file by promtool.
scrape_config() {
    if promtool check config prometheus/scrape-config.yaml >"$TMP/pc" 2>&1; then
        echo "promtool check config: valid"
        return 0
    fi
    if ! grep -q 'field kubernetes_sd_configs not found' "$TMP/pc"; then
        cat "$TMP/pc"
        return 1
    fi
    local sd
    sd="$("$PY" checks.py scrape-config-static "$TMP/scrape.yaml")" || { echo "$sd"; return 1; }
    promtool check config "$TMP/scrape.yaml" || return 1
    echo "promtool check config: valid ($sd checked by checks.py: this promtool has no Kubernetes discovery)"
}

dashboard() {
    "$PY" checks.py dashboard "$TMP/dashboard-rules.yaml" >"$TMP/dash" || { cat "$TMP/dash"; return 1; }
    promtool check rules "$TMP/dashboard-rules.yaml" || return 1
    echo "$(cat "$TMP/dash"), every query and variable parses as PromQL"
}

# Starts FATHOM_BIN serve on a free loopback port, scrapes it, stops it.
live_scrape() {
    local log="$TMP/serve.log" pid port
    "$FATHOM_BIN" serve --listen 127.0.0.1:0 >/dev/null 2>"$log" &
    pid=$!
    for _ in $(seq 100); do
        port="$(sed -n 's|.*serving http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' "$log")"
        [[ -n "$port" ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "${port:-}" ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        echo "fathom serve did not start:"
        cat "$log"
        return 1
    fi
    local rc=0
    curl -fsS "http://127.0.0.1:$port/metrics" >"$TMP/scrape.txt" || rc=1
    kill -TERM "$pid"
    wait "$pid" || true
    ((rc == 0)) || return 1
    "$PY" checks.py live-families "$TMP/scrape.txt"
}

if ! check "tools" need_tools; then
    echo "0 passed, 1 failed"
    exit 1
fi
check "kubernetes fathom.yaml (k8s $K8S_MIN)" k8s_validate "$K8S_MIN" kubernetes/fathom.yaml
NEWEST="$(newest_schema)"
check "kubernetes fathom.yaml (k8s $NEWEST)" k8s_validate "$NEWEST" kubernetes/fathom.yaml
check "kubernetes fathom.yaml cross-references" "$PY" checks.py manifests
check "kubernetes servicemonitor.yaml" "$PY" checks.py servicemonitor
check "prometheus alerts.yaml" promtool check rules prometheus/alerts.yaml
check "prometheus alerts_test.yaml" promtool test rules prometheus/alerts_test.yaml
check "prometheus scrape-config.yaml" scrape_config
check "grafana fathom-dashboard.json" dashboard
check "metric names used vs exported" "$PY" checks.py metric-names
check "helm chart files" "$PY" checks.py helm
if command -v helm >/dev/null; then
    check "helm lint" helm lint helm/fathom
    helm_render() {
        helm template fathom helm/fathom --namespace fathom --kube-version "$K8S_MIN" >"$TMP/chart.yaml" &&
            k8s_validate "$K8S_MIN" "$TMP/chart.yaml"
    }
    check "helm template (k8s $K8S_MIN)" helm_render
else
    skip "helm lint / helm template: helm is not installed (run: helm lint deploy/helm/fathom && helm template fathom deploy/helm/fathom)"
fi
if [[ -n "${FATHOM_BIN:-}" ]]; then
    check "live scrape of $FATHOM_BIN" live_scrape
else
    skip "live scrape: set FATHOM_BIN to a built fathom (as root) to compare a real /metrics with the source parse"
fi

echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0))
