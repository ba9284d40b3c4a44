#!/usr/bin/env python3
"""Offline checks of deploy/ that need more than a schema: run by deploy/check.sh.

Each subcommand is one check: it prints one summary line on success, or the problems on
stderr and exits 1. Every check also fails when it finds nothing to check, so a broken
path or an empty file cannot make it pass.

  checks.py manifests                 cross-references inside kubernetes/fathom.yaml
  checks.py servicemonitor            kubernetes/servicemonitor.yaml against the Service
  checks.py helm                      chart files, .Values references, flags, alerts copy
  checks.py chart-render YAML NS KINDS OUT
                                      a `helm template` output: its kinds, the workload's
                                      cross-references, ServiceMonitor, PrometheusRule; the
                                      built-in objects into OUT/builtin.yaml (for
                                      kubernetes-validate), the rules into OUT/rules.yaml
  checks.py scrape-config-static OUT  scrape-config.yaml with kubernetes_sd_configs checked
                                      here and swapped for static_configs in OUT (for a
                                      promtool built without Kubernetes discovery)
  checks.py dashboard OUT             dashboard structure; its queries as a rule file in OUT
  checks.py metric-names              metric names in alerts and dashboard vs. the families
                                      the source exports, and every family charted
  checks.py live-families TEXT        the exposition of a real `fathom serve` vs. the source
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
MAIN_RS = ROOT / "probe-user/src/main.rs"
METRICS_DIR = ROOT / "probe-user/src/metrics"
MANIFEST = DEPLOY / "kubernetes/fathom.yaml"
SERVICEMONITOR = DEPLOY / "kubernetes/servicemonitor.yaml"
CHART = DEPLOY / "helm/fathom"
ALERTS = DEPLOY / "prometheus/alerts.yaml"
SCRAPE_CONFIG = DEPLOY / "prometheus/scrape-config.yaml"
DASHBOARD = DEPLOY / "grafana/fathom-dashboard.json"


class CheckFailed(Exception):
    pass


def fail_if(problems: list[str]) -> None:
    if problems:
        raise CheckFailed("\n".join(problems))


def load_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if not docs:
        raise CheckFailed(f"{path}: no YAML documents")
    return docs


def by_kind(docs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for d in docs:
        if d.get("kind") in out:
            raise CheckFailed(f"two {d['kind']} objects; the checks expect one of each")
        out[d.get("kind")] = d
    return out


# ---------------------------------------------------------------------------------------
# fathom's command line, from probe-user/src/main.rs
# ---------------------------------------------------------------------------------------


def cli_flags() -> dict[str, set[str]]:
    """Long flags per scope: "global" and each subcommand ("serve", "capture").

    clap derives `--field-name` from a field named `field_name` under `#[arg(long …)]`.
    """
    src = MAIN_RS.read_text()
    scopes: dict[str, set[str]] = {"global": set()}
    scope = "global"
    pending_long = False
    for line in src.splitlines():
        s = line.strip()
        # Subcommand variants look like `Capture {` / `Serve {` inside `enum Command`.
        m = re.match(r"^([A-Z]\w*)\s*\{$", s)
        if m:
            scope = m.group(1).lower()
            scopes.setdefault(scope, set())
            continue
        if s.startswith("#[arg(") and re.search(r"\blong\b", s):
            explicit = re.search(r'\blong\s*=\s*"([^"]+)"', s)
            pending_long = explicit.group(1) if explicit else True
            continue
        m = re.match(r"^(?:pub\s+)?(\w+)\s*:", s)
        if m and pending_long:
            name = pending_long if isinstance(pending_long, str) else m.group(1).replace("_", "-")
            scopes.setdefault(scope, set()).add("--" + name)
            pending_long = False
            continue
        if s and not s.startswith("#[") and not s.startswith("///"):
            pending_long = False
    if not scopes["global"] or "serve" not in scopes or len(scopes["serve"]) < 3:
        raise CheckFailed(f"could not read fathom's flags from {MAIN_RS}: {scopes}")
    return scopes


def check_serve_args(args: list[str], where: str) -> list[str]:
    """Problems with a `fathom serve …` argument list (unknown flags, wrong subcommand)."""
    flags = cli_flags()
    known = flags["global"] | flags["serve"]
    problems = []
    if not args or args[0] != "serve":
        problems.append(f"{where}: the first argument must be `serve`, not {args[:1]}")
    for a in args[1:]:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            if flag not in known:
                problems.append(f"{where}: `fathom serve` has no flag {flag} (known: {sorted(known)})")
    return problems


# ---------------------------------------------------------------------------------------
# kubernetes/fathom.yaml
# ---------------------------------------------------------------------------------------


def cmd_manifests() -> str:
    k = by_kind(load_docs(MANIFEST))
    for kind in ("Namespace", "ServiceAccount", "DaemonSet", "Service"):
        if kind not in k:
            raise CheckFailed(f"{MANIFEST.name}: no {kind}")
    ns = k["Namespace"]["metadata"]["name"]
    problems = []
    if k["Namespace"]["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "privileged":
        problems.append("the namespace does not admit privileged pods (pod-security enforce label)")
    summary, more = check_workload(k, ns, MANIFEST.name)
    fail_if(problems + more)
    return summary


def check_workload(k: dict[str, dict], ns: str, where: str) -> tuple[str, list[str]]:
    """Summary and problems of the DaemonSet with its ServiceAccount and, when present, the
    Service and NetworkPolicy in front of it (fathom.yaml, or a render of the chart)."""
    for kind in ("ServiceAccount", "DaemonSet"):
        if kind not in k:
            raise CheckFailed(f"{where}: no {kind}")
    ds, sa, svc, netpol = k["DaemonSet"], k["ServiceAccount"], k.get("Service"), k.get("NetworkPolicy")
    present = [o for o in (ds, svc, sa, netpol) if o is not None]
    problems = []
    for obj in present:
        if obj["metadata"].get("namespace") != ns:
            problems.append(f"{obj['kind']} is not in namespace {ns}")

    spec = ds["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    if any(pod_labels.get(key) != v for key, v in spec["selector"]["matchLabels"].items()):
        problems.append("DaemonSet selector does not match its pod labels")
    if svc is not None and any(pod_labels.get(key) != v for key, v in svc["spec"]["selector"].items()):
        problems.append("Service selector does not match the pods")
    if pod.get("serviceAccountName") != sa["metadata"]["name"]:
        problems.append("pods do not use the ServiceAccount")
    if pod.get("hostPID") is not True:
        problems.append("hostPID must be true (fathom reads /proc/<pid>/ns/net of other pods)")
    if not any(t.get("operator") == "Exists" and "key" not in t for t in pod.get("tolerations", [])):
        problems.append("pods must tolerate every taint (operator: Exists without key)")
    if spec.get("updateStrategy", {}).get("rollingUpdate", {}).get("maxUnavailable") is None:
        problems.append("no RollingUpdate maxUnavailable")

    (c,) = pod["containers"]
    problems += check_serve_args(c.get("args", []), f"{where} args")
    args = c.get("args", [])
    listen = args[args.index("--listen") + 1] if "--listen" in args else "0.0.0.0:9717"
    port = int(listen.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("metrics") != port:
        problems.append(f"containerPort `metrics` {ports.get('metrics')} is not the --listen port {port}")
    schemes = set()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or g.get("port") not in ("metrics", port):
            problems.append(f"{probe} must GET {path} on the metrics port, not {g}")
        schemes.add(g.get("scheme", "HTTP"))
    if len(schemes) != 1:
        problems.append(f"the probes disagree on the scheme: {sorted(schemes)}")
    if svc is not None:
        (sp,) = svc["spec"]["ports"]
        if sp.get("targetPort") not in ("metrics", port) or sp.get("port") != port:
            problems.append(f"Service port {sp} does not lead to the metrics port")
        if svc["spec"].get("clusterIP") != "None":
            problems.append("the Service must be headless (clusterIP: None)")
    if netpol is not None:
        np_spec = netpol["spec"]
        sel = np_spec.get("podSelector", {}).get("matchLabels", {})
        if not sel or any(pod_labels.get(key) != v for key, v in sel.items()):
            problems.append(f"NetworkPolicy podSelector {sel} does not select the pods")
        for rule in np_spec.get("ingress", []):
            for p in rule.get("ports", []):
                if p.get("port") not in ("metrics", port):
                    problems.append(f"NetworkPolicy admits port {p.get('port')}, not the metrics port")
        if not any(r.get("ports") for r in np_spec.get("ingress", [])):
            problems.append("NetworkPolicy does not admit anyone to the metrics port")
    env = {e["name"]: e for e in c.get("env", [])}
    if env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        problems.append("NODE_NAME must come from spec.nodeName")

    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if set(mounts) != set(volumes):
        problems.append(f"volumes and mounts differ: {sorted(set(mounts) ^ set(volumes))}")
    by_path = {m["mountPath"]: m for m in mounts.values()}
    for path in ("/sys/fs/cgroup", "/sys/kernel/btf", "/run/netns"):
        if path not in by_path:
            problems.append(f"{path} is not mounted")
        elif not by_path[path].get("readOnly"):
            problems.append(f"{path} must be mounted read-only")
    for m in mounts.values():
        if m.get("mountPropagation") == "Bidirectional":
            problems.append(f"{m['name']}: Bidirectional propagation needs a privileged container")
    for flag, default in (("--containerd-socket", "/run/containerd/containerd.sock"),
                          ("--crio-socket", "/run/crio/crio.sock"),
                          ("--docker-socket", "/var/run/docker.sock"),
                          ("--web.config.file", "")):
        value = next((a.split("=", 1)[1] for a in args if a.startswith(flag + "=")), default)
        if value and not any(value.startswith(p.rstrip("/") + "/") or value == p for p in by_path):
            problems.append(f"{flag} {value} is not under any mounted path")

    sc = c.get("securityContext", {})
    if not sc.get("privileged"):
        caps = set(sc.get("capabilities", {}).get("add", []))
        # probe-user/src/privileges.rs: CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON.
        if "SYS_ADMIN" not in caps and not {"BPF", "PERFMON"} <= caps:
            problems.append(f"capabilities {sorted(caps)} cannot load BPF programs")
    limits = c.get("resources", {}).get("limits", {})
    if "memory" not in limits:
        problems.append("no memory limit")
    return (f"{', '.join(o['kind'] for o in present)} consistent; args known to `fathom serve`; "
            f"{len(mounts)} mounts; port {port}"), problems


# ---------------------------------------------------------------------------------------
# kubernetes/servicemonitor.yaml (no CRD schema offline: check what we rely on)
# ---------------------------------------------------------------------------------------

RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}
ENDPOINT_KEYS = {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
                 "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings",
                 "tlsConfig", "bearerTokenFile", "authorization", "basicAuth", "oauth2",
                 "followRedirects", "enableHttp2", "filterRunning", "proxyUrl",
                 "trackTimestampsStaleness", "scrapeProtocols"}
SPEC_KEYS = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels",
             "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit", "attachMetadata",
             "scrapeProtocols", "selectorMechanism"}


def check_relabelings(items: list, where: str) -> list[str]:
    problems = []
    for r in items:
        extra = set(r) - RELABEL_KEYS
        if extra:
            problems.append(f"{where}: unknown relabeling keys {sorted(extra)}")
        action = r.get("action", "replace")
        if action.lower() not in RELABEL_ACTIONS:
            problems.append(f"{where}: unknown relabeling action {action}")
        if action.lower() == "replace" and "targetLabel" not in r:
            problems.append(f"{where}: a replace relabeling needs targetLabel")
        if "regex" in r:
            try:
                re.compile(r["regex"])
            except re.error as e:
                problems.append(f"{where}: regex {r['regex']!r}: {e}")
    return problems


def cmd_servicemonitor() -> str:
    k = by_kind(load_docs(MANIFEST))
    (sm,) = load_docs(SERVICEMONITOR)
    fail_if(check_servicemonitor(sm, k["Service"], k["DaemonSet"]))
    return SERVICEMONITOR_OK


SERVICEMONITOR_OK = ("selects the Service's `metrics` port, job=\"fathom\", keeps fathom's "
                     "namespace/pod labels (structural: no CRD schema offline)")


def check_servicemonitor(sm: dict, svc: dict, ds: dict) -> list[str]:
    """Problems of a ServiceMonitor meant to scrape the pods of `ds` behind `svc`."""
    problems = []
    if sm.get("apiVersion") != "monitoring.coreos.com/v1" or sm.get("kind") != "ServiceMonitor":
        problems.append(f"not a monitoring.coreos.com/v1 ServiceMonitor: {sm.get('apiVersion')} {sm.get('kind')}")
    spec = sm.get("spec", {})
    extra = set(spec) - SPEC_KEYS
    if extra:
        problems.append(f"unknown spec keys {sorted(extra)}")
    svc_labels = svc["metadata"].get("labels", {})
    sel = spec.get("selector", {}).get("matchLabels", {})
    if not sel or any(svc_labels.get(key) != v for key, v in sel.items()):
        problems.append(f"selector {sel} does not select the Service (labels {svc_labels})")
    names = spec.get("namespaceSelector", {}).get("matchNames")
    ns = svc["metadata"]["namespace"]
    if names is not None and ns not in names:
        problems.append(f"namespaceSelector {names} misses {ns}")
    if sm["metadata"].get("namespace") != ns and names is None:
        problems.append("ServiceMonitor in another namespace without namespaceSelector")
    job_label = spec.get("jobLabel")
    if job_label and svc_labels.get(job_label) != "fathom":
        problems.append(f"jobLabel {job_label} does not give job=\"fathom\" (FathomDown selects it)")
    if not job_label and svc["metadata"]["name"] != "fathom":
        problems.append("job would not be \"fathom\" (FathomDown selects it)")
    port_names = {p.get("name") for p in svc["spec"]["ports"]}
    endpoints = spec.get("endpoints", [])
    if not endpoints:
        problems.append("no endpoints")
    for i, ep in enumerate(endpoints):
        extra = set(ep) - ENDPOINT_KEYS
        if extra:
            problems.append(f"endpoints[{i}]: unknown keys {sorted(extra)}")
        if ep.get("port") not in port_names:
            problems.append(f"endpoints[{i}].port {ep.get('port')} is not a Service port name {port_names}")
        rl = ep.get("relabelings", [])
        problems += check_relabelings(rl, f"endpoints[{i}].relabelings")
        problems += check_relabelings(ep.get("metricRelabelings", []), f"endpoints[{i}].metricRelabelings")
        dropped = [r for r in rl if r.get("action") == "labeldrop"]
        if not dropped or not all(re.fullmatch(dropped[0]["regex"], n) for n in ("namespace", "pod")):
            problems.append(f"endpoints[{i}]: the target's namespace/pod labels must be dropped "
                            "(they would rename fathom's own namespace/pod labels)")
        (c,) = ds["spec"]["template"]["spec"]["containers"]
        probe = c.get("readinessProbe", {}).get("httpGet", {}).get("scheme", "HTTP")
        if ep.get("scheme", "http").lower() != probe.lower():
            problems.append(f"endpoints[{i}].scheme {ep.get('scheme', 'http')} but the probes use {probe}")
    return problems


# ---------------------------------------------------------------------------------------
# helm/fathom
# ---------------------------------------------------------------------------------------


def values_paths(node, prefix="") -> set[str]:
    out = set()
    if isinstance(node, dict):
        for key, v in node.items():
            p = f"{prefix}.{key}" if prefix else key
            out.add(p)
            out |= values_paths(v, p)
    return out


def cmd_helm() -> str:
    problems = []
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for key in ("apiVersion", "name", "version", "appVersion"):
        if not chart.get(key):
            problems.append(f"Chart.yaml: no {key}")
    if chart.get("apiVersion") != "v2":
        problems.append("Chart.yaml: apiVersion must be v2 (Helm 3)")
    if not re.fullmatch(r"\d+\.\d+\.\d+(-[\w.]+)?", str(chart.get("version", ""))):
        problems.append(f"Chart.yaml: version {chart.get('version')} is not SemVer 2")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    paths = values_paths(values)
    templates = sorted((CHART / "templates").glob("*"))
    if len(templates) < 4:
        problems.append(f"only {len(templates)} files in templates/")
    refs = 0
    for t in templates:
        text = t.read_text()
        if text.count("{{") != text.count("}}"):
            problems.append(f"{t.name}: unbalanced {{{{ }}}}")
        for m in re.finditer(r"\.Values\.([A-Za-z0-9_.]+)", text):
            refs += 1
            if m.group(1).rstrip(".") not in paths:
                problems.append(f"{t.name}: .Values.{m.group(1)} is not in values.yaml")
        # $sockets := .Values.runtimeSockets → $sockets.x.y
        for var, base in re.findall(r"\{\{-?\s*(\$\w+)\s*:=\s*\.Values\.([\w.]+)", text):
            for m in re.finditer(re.escape(var) + r"\.([A-Za-z0-9_.]+)", text):
                refs += 1
                if f"{base}.{m.group(1)}" not in paths:
                    problems.append(f"{t.name}: {var}.{m.group(1)} (.Values.{base}.{m.group(1)}) is not in values.yaml")
    if refs < 20:
        problems.append(f"only {refs} .Values references found: is the regex still right?")

    ds = (CHART / "templates/daemonset.yaml").read_text()
    # Flags the template passes, literally or through printf "--flag=…".
    flags = set(re.findall(r"^\s*- (--[a-z-]+)\s*$", ds, re.M))
    flags |= set(re.findall(r'printf "(--[a-z-]+)=', ds))
    known = cli_flags()
    known = known["global"] | known["serve"]
    for f in sorted(flags):
        if f not in known:
            problems.append(f"daemonset.yaml: `fathom serve` has no flag {f}")
    if len(flags) < 6:
        problems.append(f"daemonset.yaml: only {len(flags)} flags found")
    if (CHART / "files/alerts.yaml").read_bytes() != ALERTS.read_bytes():
        problems.append("files/alerts.yaml differs from deploy/prometheus/alerts.yaml: "
                        "cp deploy/prometheus/alerts.yaml deploy/helm/fathom/files/alerts.yaml")
    fail_if(problems)
    return (f"Chart.yaml/values.yaml parse, {refs} .Values references exist, {len(flags)} flags "
            f"known to `fathom serve`, alerts copy identical")


# Kinds in a render of the chart that kubernetes-validate has no schema for (the Prometheus
# Operator's CRDs): checked here instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def cmd_chart_render(rendered: str, namespace: str, kinds: str, out_dir: str) -> str:
    """A `helm template` output: exactly the comma-separated `kinds`, all in `namespace`.
    Writes the built-in objects, as rendered, to OUT_DIR/builtin.yaml (for kubernetes-validate)
    and a PrometheusRule's groups to OUT_DIR/rules.yaml (for promtool); checks the workload's
    cross-references and a ServiceMonitor against the Service."""
    text = Path(rendered).read_text()
    chunks = [c for c in re.split(r"^---[ \t]*$", text, flags=re.M) if yaml.safe_load(c) is not None]
    if not chunks:
        raise CheckFailed(f"{rendered}: helm rendered nothing")
    docs = [yaml.safe_load(c) for c in chunks]
    problems = []
    got, want = sorted(d.get("kind", "?") for d in docs), sorted(kinds.split(","))
    if got != want:
        problems.append(f"rendered {got}, expected {want}")
    k = by_kind(docs)
    for d in docs:
        if d.get("metadata", {}).get("namespace") != namespace:
            problems.append(f"{d.get('kind')} is not in the release namespace {namespace}")
    out = Path(out_dir)
    builtin = [c for c, d in zip(chunks, docs) if d.get("kind") not in CRD_KINDS]
    (out / "builtin.yaml").write_text("".join("---" + c for c in builtin))
    summary, more = check_workload(k, namespace, "chart DaemonSet")
    problems += more
    if "ServiceMonitor" in k:
        if "Service" not in k:
            problems.append("a ServiceMonitor without the Service it selects")
        else:
            problems += [f"ServiceMonitor: {p}" for p in check_servicemonitor(k["ServiceMonitor"], k["Service"], k["DaemonSet"])]
        summary += "; ServiceMonitor selects the Service, job=\"fathom\", keeps fathom's namespace/pod labels"
    if "PrometheusRule" in k:
        spec = k["PrometheusRule"].get("spec")
        if spec != yaml.safe_load(ALERTS.read_text()):
            problems.append("the PrometheusRule's spec is not the content of deploy/prometheus/alerts.yaml")
        (out / "rules.yaml").write_text(yaml.safe_dump(spec))
        summary += "; PrometheusRule = alerts.yaml"
    fail_if(problems)
    return summary


# ---------------------------------------------------------------------------------------
# prometheus/scrape-config.yaml
# ---------------------------------------------------------------------------------------


def cmd_scrape_config_static(out: str) -> str:
    cfg = yaml.safe_load(SCRAPE_CONFIG.read_text())
    problems = []
    jobs = cfg.get("scrape_configs", [])
    if [j.get("job_name") for j in jobs] != ["fathom"]:
        problems.append(f"expected one job `fathom`, found {[j.get('job_name') for j in jobs]}")
    swapped = 0
    for j in jobs:
        for sd in j.pop("kubernetes_sd_configs", []):
            swapped += 1
            if sd.get("role") not in {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}:
                problems.append(f"kubernetes_sd_configs role {sd.get('role')}")
            extra = set(sd) - {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata"}
            if extra:
                problems.append(f"kubernetes_sd_configs: unknown keys {sorted(extra)}")
            names = sd.get("namespaces", {}).get("names")
            if names is not None and not all(isinstance(n, str) for n in names):
                problems.append("kubernetes_sd_configs namespaces.names must be strings")
        j["static_configs"] = [{"targets": ["127.0.0.1:9717"]}]
    if not swapped:
        problems.append("no kubernetes_sd_configs to check")
    cfg["rule_files"] = [str(SCRAPE_CONFIG.parent / f) for f in cfg.get("rule_files", [])]
    fail_if(problems)
    Path(out).write_text(yaml.safe_dump(cfg))
    return f"{swapped} kubernetes_sd_configs"


# ---------------------------------------------------------------------------------------
# grafana/fathom-dashboard.json
# ---------------------------------------------------------------------------------------

GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "${datasource}": "", "$node": ".*", "$namespace": ".*"}


def dashboard_targets(dash: dict) -> list[tuple[str, dict]]:
    out = []
    for p in dash.get("panels", []):
        for sub in [p] + p.get("panels", []):
            for t in sub.get("targets", []):
                out.append((sub.get("title", "?"), t))
    return out


def cmd_dashboard(out: str) -> str:
    dash = json.loads(DASHBOARD.read_text())
    problems = []
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource (prometheus)")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append("duplicate panel ids")
    for p in dash.get("panels", []):
        if "gridPos" not in p:
            problems.append(f"panel {p.get('title')} has no gridPos")
        if p.get("type") != "row" and p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {p.get('title')} does not use the datasource variable")
    targets = dashboard_targets(dash)
    if len(targets) < 10:
        problems.append(f"only {len(targets)} queries")
    rules = []
    for i, (title, t) in enumerate(targets):
        if t.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{title}: query {t.get('refId')} does not use the datasource variable")
        expr = t.get("expr", "")
        for var in re.findall(r"\$\{?\w+\}?", expr):
            if var not in GRAFANA_VARS:
                problems.append(f"{title}: unknown variable {var}")
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    for v in variables.values():
        q = v.get("query")
        if v.get("type") == "query":
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
            if not m:
                problems.append(f"variable {v['name']}: expected label_values(selector, label), got {q}")
            else:
                rules.append({"record": f"dashboard:variable_{v['name']}", "expr": m.group(1)})
    fail_if(problems)
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return f"{len(dash['panels'])} panels, {len(targets)} queries"


# ---------------------------------------------------------------------------------------
# Metric families: what the source exports vs. what alerts and dashboard use
# ---------------------------------------------------------------------------------------


def strip_tests(src: str) -> str:
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+", src)
    return src[: m.start()] if m else src


def balanced(src: str, start: int, open_ch: str, close_ch: str) -> tuple[str, int]:
    """The text between src[start] == open_ch and its matching close_ch (string-aware)."""
    assert src[start] == open_ch
    depth, i = 0, start
    while i < len(src):
        ch = src[i]
        if ch == '"':
            i += 1
            while src[i] != '"':
                i += 2 if src[i] == "\\" else 1
        elif ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return src[start + 1 : i], i
        i += 1
    raise CheckFailed("unbalanced source text")


def split_args(text: str) -> list[str]:
    args, depth, cur, i = [], 0, "", 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            cur += text[i : j + 1]
            i = j + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if cur.strip():
        args.append(cur.strip())
    return args


NAME_LIT = re.compile(r'"(fathom_[a-z0-9_]+)"')


def resolve_name(arg: str, src: str, at: int, path: Path) -> list[str]:
    m = re.fullmatch(r'"(fathom_[a-z0-9_]+)"', arg)
    if m:
        return [m.group(1)]
    if not re.fullmatch(r"\w+", arg):
        raise CheckFailed(f"{path.name}: cannot read the metric name from `{arg}`")
    # const NAME: &str = "fathom_…";
    m = re.search(r"const\s+" + arg + r'\s*:\s*&(?:\'static\s+)?str\s*=\s*"(fathom_[a-z0-9_]+)"', src)
    if m:
        return [m.group(1)]
    # for (name, …) in [("fathom_a", …), ("fathom_b", …)] { … encode_descriptor(name, …) }
    loops = list(re.finditer(r"for\s*\(\s*" + arg + r"\s*,[^)]*\)\s*in\s*\[", src[:at]))
    if loops:
        body, _ = balanced(src, loops[-1].end() - 1, "[", "]")
        names = re.findall(r'\(\s*"(fathom_[a-z0-9_]+)"', body)
        if names:
            return names
    # fn helper(…, name: &str, …) { encode_descriptor(name, …) } called with literals.
    fns = list(re.finditer(r"fn\s+(\w+)\s*(?:<[^>]*>)?\s*\(", src[:at]))
    if fns:
        fn = fns[-1]
        params, _ = balanced(src, fn.end() - 1, "(", ")")
        if re.search(r"\b" + arg + r"\s*:\s*&(?:'\w+\s+)?str", params):
            names = []
            for call in re.finditer(r"\b" + fn.group(1) + r"\s*\(", src):
                if call.start() == fn.start() + fn.group(0).index(fn.group(1)):
                    continue
                call_args, _ = balanced(src, call.end() - 1, "(", ")")
                names += NAME_LIT.findall(call_args)
            if names:
                return names
    raise CheckFailed(f"{path.name}: cannot tell which metric name `{arg}` holds")


SUFFIX = {"Counter": ["_total"], "Gauge": [""], "Unknown": [""], "StateSet": [""],
          "Info": ["_info"], "Histogram": ["_bucket", "_sum", "_count"],
          "GaugeHistogram": ["_bucket", "_gsum", "_gcount"], "Summary": ["", "_sum", "_count"]}


def exported_families() -> dict[str, tuple[str, str]]:
    """Exposed name → (type, source file) for every encode_descriptor in metrics/."""
    files = sorted(METRICS_DIR.rglob("*.rs"))
    if not files:
        raise CheckFailed(f"no Rust files under {METRICS_DIR}")
    families: dict[str, tuple[str, str]] = {}
    bases: set[str] = set()
    literals: dict[str, Path] = {}
    for path in files:
        src = strip_tests(path.read_text())
        for name in NAME_LIT.findall(src):
            literals[name] = path
        for m in re.finditer(r"\bencode_descriptor\s*\(", src):
            body, _ = balanced(src, m.end() - 1, "(", ")")
            args = split_args(body)
            if len(args) != 4:
                raise CheckFailed(f"{path.name}: encode_descriptor with {len(args)} arguments: {body[:80]}")
            unit_m = re.fullmatch(r"None|Some\(&?Unit::(\w+)(?:\(\"(\w+)\"\))?\)", args[2])
            type_m = re.fullmatch(r"MetricType::(\w+)", args[3])
            if not unit_m or not type_m or type_m.group(1) not in SUFFIX:
                raise CheckFailed(f"{path.name}: cannot read unit/type from `{args[2]}`, `{args[3]}`")
            unit = (unit_m.group(2) or unit_m.group(1) or "").lower()
            for base in resolve_name(args[0], src, m.start(), path):
                bases.add(base)
                name = base + (f"_{unit}" if unit and not base.endswith(f"_{unit}") else "")
                # A histogram is one family (`# TYPE <name> histogram`) queried through its
                # _bucket/_sum/_count series: keyed by its name (see family_of).
                suffixes = [""] if type_m.group(1) == "Histogram" else SUFFIX[type_m.group(1)][:1]
                for suffix in suffixes:
                    families[name + suffix] = (type_m.group(1).lower(), path.name)
    unaccounted = sorted(set(literals) - bases)
    if unaccounted:
        raise CheckFailed("metric-name literals the checker cannot place (teach deploy/checks.py "
                          f"how they are encoded): {unaccounted}")
    for anchor in ("fathom_oom_kills_total", "fathom_build_info"):
        if anchor not in families:
            raise CheckFailed(f"{anchor} not found among {sorted(families)}: is the parser still right?")
    return families


def used_names() -> dict[str, set[str]]:
    """fathom_* names in the alerts (expressions and annotations) and in the dashboard."""
    used: dict[str, set[str]] = {}
    alert_text = yaml.safe_dump(yaml.safe_load(ALERTS.read_text()))
    dash_text = DASHBOARD.read_text()
    for where, text in (("alerts.yaml", alert_text), ("fathom-dashboard.json", dash_text)):
        for name in re.findall(r"\bfathom_[a-z0-9_]*[a-z0-9]\b", text):
            used.setdefault(name, set()).add(where)
    return used


def family_of(name: str, families: dict[str, tuple[str, str]]) -> str:
    """The family a queried series name belongs to (a histogram's _bucket/_sum/_count → it)."""
    for suffix in SUFFIX["Histogram"]:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and families.get(base, ("",))[0] == "histogram":
            return base
    return name


def cmd_metric_names() -> str:
    families = exported_families()
    used: dict[str, set[str]] = {}
    for name, where in used_names().items():
        used.setdefault(family_of(name, families), set()).update(where)
    problems = []
    for name, where in sorted(used.items()):
        if name not in families:
            problems.append(f"{name} (used in {', '.join(sorted(where))}) is not exported; "
                            f"exported: {', '.join(sorted(families))}")
    dash_used = {n for n, w in used.items() if "fathom-dashboard.json" in w}
    for name in sorted(set(families) - dash_used):
        problems.append(f"{name} ({families[name][1]}) has no panel in the dashboard")
    fail_if(problems)
    in_alerts = sum(1 for w in used.values() if "alerts.yaml" in w)
    return (f"{len(used)} names used ({in_alerts} in alerts) all among the {len(families)} "
            f"families in probe-user/src/metrics/; every family charted")


def cmd_live_families(text_path: str) -> str:
    text = Path(text_path).read_text()
    live = {}
    for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, typ = m.groups()
        live[name + ("_total" if typ == "counter" and not name.endswith("_total") else "")] = typ
    if not live:
        raise CheckFailed(f"no # TYPE lines in the scrape ({len(text)} bytes)")
    static = exported_families()
    problems = []
    if set(live) != set(static):
        problems.append(f"only in the scrape: {sorted(set(live) - set(static))}; "
                        f"only in the source parse: {sorted(set(static) - set(live))}")
    fail_if(problems)
    return f"the {len(live)} families of a real scrape equal the source parse"


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = sys.argv[1], sys.argv[2:]
    commands = {"manifests": cmd_manifests, "servicemonitor": cmd_servicemonitor,
                "helm": cmd_helm, "chart-render": cmd_chart_render,
                "scrape-config-static": cmd_scrape_config_static,
                "dashboard": cmd_dashboard, "metric-names": cmd_metric_names,
                "live-families": cmd_live_families}
    if cmd not in commands:
        print(f"unknown check {cmd}", file=sys.stderr)
        return 2
    try:
        print(commands[cmd](*rest))
    except CheckFailed as e:
        print(e, file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError, TypeError, yaml.YAMLError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
