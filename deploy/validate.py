#!/usr/bin/env python3
"""Offline consistency checks for deploy/ (run by deploy/validate.sh).

Schema validators check each file on its own; this script checks what ties
the files together and to the code: Services and probes point at ports that
exist, selectors select something, the gateway's grace period outlasts its
drain, every metric and label the dashboard and the alerts query is one the
binaries export (deploy/metrics.txt), every alert has a runbook section, the
Dockerfile builds binaries the workspace declares, and so on.

Usage: validate.py ROOT RENDERED_K8S_YAML OUT_DIR
  OUT_DIR receives topology.json (for the JSON-schema check),
  dashboard.rules.yaml (the dashboard's queries as recording rules, for
  `promtool check rules`), alerts.rules.yaml (the PrometheusRule's spec) and
  test/alerts.rules.yaml (the same without annotations, for promtool's unit
  tests in prometheus/alerts.test.yaml).

Exit status 1 when any check fails; warnings do not fail.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ERRORS: list[str] = []
WARNINGS: list[str] = []


def err(where: str, msg: str) -> None:
    ERRORS.append(f"{where}: {msg}")


def warn(where: str, msg: str) -> None:
    WARNINGS.append(f"{where}: {msg}")


# ---------------------------------------------------------------------------
# metric catalogue
# ---------------------------------------------------------------------------

# Labels Prometheus / the operator / kube-state-metrics attach to any series.
TARGET_LABELS = {
    "namespace", "pod", "instance", "job", "container", "service", "endpoint",
    "node", "__name__",
}


class Catalog:
    def __init__(self, path: Path) -> None:
        self.metrics: dict[str, tuple[str, dict[str, set[str] | None]]] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) not in (2, 3) or parts[1] not in ("counter", "gauge", "histogram"):
                err(f"{path}:{n}", f"expected `name type [labels]`, got {line!r}")
                continue
            labels: dict[str, set[str] | None] = {}
            if len(parts) == 3:
                for spec in parts[2].split(","):
                    name, _, values = spec.partition("=")
                    labels[name] = set(values.split("|")) if values else None
            # A metric both binaries export is listed in both sections; the
            # two must agree.
            if parts[0] in self.metrics and self.metrics[parts[0]] != (parts[1], labels):
                err(f"{path}:{n}", f"`{parts[0]}` is listed twice with different types or labels")
            self.metrics[parts[0]] = (parts[1], labels)

    def resolve(self, name: str) -> tuple[str, str, dict[str, set[str] | None]] | None:
        """(base name, kind, labels); kind is counter/gauge/histogram/bucket/hsum."""
        if name in self.metrics:
            kind, labels = self.metrics[name]
            return name, kind, labels
        for suffix, kind in (("_bucket", "bucket"), ("_sum", "hsum"), ("_count", "hsum")):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.metrics.get(base, ("",))[0] == "histogram":
                labels = dict(self.metrics[base][1])
                if kind == "bucket":
                    labels["le"] = None
                return base, kind, labels
        return None


SELECTOR_RE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}")
MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
RANGE_NAME_RE = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\[")
BARE_NAME_RE = re.compile(r"\b((?:switchyard|kube)_[a-zA-Z0-9_:]*)\b")
GROUPING_RE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
RATE_RE = re.compile(r"\b(rate|irate|increase)\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
HQ_RE = re.compile(r"histogram_quantile\s*\(\s*[0-9.]+\s*,(.*)", re.S)
SIMPLE_ALTERNATION = re.compile(r"^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$")


def check_promql(cat: Catalog, where: str, expr: str, legend: str | None = None) -> set[str]:
    """Checks metric names, labels and label values of one expression.
    Returns the set of metric base names it queries."""
    used: set[str] = set()
    labels_in_expr: set[str] = set(TARGET_LABELS)

    def use(name: str) -> tuple[str, str, dict[str, set[str] | None]] | None:
        r = cat.resolve(name)
        if r is None:
            err(where, f"queries `{name}`, which is not in deploy/metrics.txt")
            return None
        base, kind, labels = r
        if kind == "histogram":
            err(where, f"`{name}` is a histogram: query `{name}_bucket`, `_sum` or `_count`")
        used.add(base)
        labels_in_expr.update(labels)
        return r

    names: set[str] = set()
    for m in SELECTOR_RE.finditer(expr):
        metric, body = m.group(1), m.group(2)
        matchers = MATCHER_RE.findall(body)
        if metric and metric not in ("by", "without", "on", "ignoring"):
            names.add(metric)
            r = use(metric)
            allowed = dict(r[2]) if r else {}
        else:
            allowed = {}
            metric = None
        for label, op, value in matchers:
            if label == "__name__":
                if op == "=~" and SIMPLE_ALTERNATION.match(value):
                    for alt in value.split("|"):
                        names.add(alt)
                        r = use(alt)
                        if r:
                            allowed.update(r[2])
                elif op == "=":
                    names.add(value)
                    use(value)
                continue
            if metric is None and not allowed:
                continue
            if label not in allowed and label not in TARGET_LABELS:
                err(where, f"`{metric or '{...}'}` has no label `{label}`")
                continue
            values = allowed.get(label)
            if values and op in ("=", "=~") and "$" not in value:
                alts = value.split("|") if (op == "=~" and SIMPLE_ALTERNATION.match(value)) else (
                    [value] if op == "=" else [])
                for alt in alts:
                    if alt not in values:
                        err(where, f'`{metric}{{{label}{op}"{value}"}}`: `{alt}` is not one of {sorted(values)}')
    for m in RANGE_NAME_RE.finditer(expr):
        if m.group(1) not in names:
            names.add(m.group(1))
            use(m.group(1))
    for m in BARE_NAME_RE.finditer(expr):
        if m.group(1) not in names:
            names.add(m.group(1))
            use(m.group(1))
    for m in GROUPING_RE.finditer(expr):
        for label in filter(None, (x.strip() for x in m.group(2).split(","))):
            if label not in labels_in_expr:
                err(where, f"groups `{m.group(1)} ({m.group(2)})` by `{label}`, a label none of its metrics has")
    for m in RATE_RE.finditer(expr):
        r = cat.resolve(m.group(2))
        if r and r[1] == "gauge":
            err(where, f"`{m.group(1)}({m.group(2)})`: {m.group(2)} is a gauge")
    for m in HQ_RE.finditer(expr):
        if "_bucket" not in m.group(1):
            err(where, "histogram_quantile over something that is not a `_bucket` series")
    if legend:
        for label in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend):
            if label not in labels_in_expr:
                err(where, f"legend uses `{{{{{label}}}}}`, a label the query does not have")
    return used


# ---------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def known_env(root: Path) -> set[str]:
    names = {
        "SWITCHYARD_POSTGRES_URL", "SWITCHYARD_REDIS_URL", "SWITCHYARD_TOPOLOGY",
        "SWITCHYARD_KAFKA_BROKERS", "SWITCHYARD_KAFKA_TOPICS", "SWITCHYARD_KAFKA_GROUP",
        "SWITCHYARD_KAFKA_DLQ_TOPIC", "SWITCHYARD_LISTEN", "SWITCHYARD_ADMIN_LISTEN",
        "SWITCHYARD_JWT_HS256_SECRET", "SWITCHYARD_JWT_PUBLIC_KEY", "SWITCHYARD_JWT_ISSUER",
        "SWITCHYARD_JWT_AUDIENCE", "SWITCHYARD_DRAIN_SECONDS", "SWITCHYARD_LOG_FORMAT",
        "RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
    }
    for rs in root.glob("*/src/**/*.rs"):
        names.update(re.findall(r'"(SWITCHYARD_[A-Z0-9_]+)"', rs.read_text(errors="replace")))
    return names


def check_topology(where: str, text: str) -> dict | None:
    try:
        topo = json.loads(text)
    except json.JSONDecodeError as e:
        err(where, f"topology.json is not valid JSON: {e}")
        return None
    seen_names: set[str] = set()
    for hub in topo.get("Hubs", []):
        collections = {c.get("Name") for c in hub.get("FilterCollections", [])}
        for ch in hub.get("Channels", []):
            name = ch.get("Name", "?")
            if name in seen_names:
                err(where, f"channel name `{name}` appears twice")
            seen_names.add(name)
            if "[ScopeValue]" in name and not ch.get("Filters") and not ch.get("FilterCollections"):
                err(where, f"channel `{name}` has a [ScopeValue] placeholder but no filters to fill it")
            for ref in ch.get("FilterCollections", []) if isinstance(ch.get("FilterCollections"), list) else []:
                if isinstance(ref, str) and ref not in collections:
                    err(where, f"channel `{name}` names an unknown filter collection `{ref}`")
    return topo


def check_kubernetes(root: Path, rendered: Path, out: Path) -> None:
    docs = load_docs(rendered)
    kdir = root / "deploy/kubernetes"
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        where = f"{d.get('kind', '?')}/{d.get('metadata', {}).get('name', '?')}"
        for key in ("apiVersion", "kind", "metadata"):
            if key not in d:
                err(where, f"missing `{key}`")
        meta = d.get("metadata", {})
        if "namespace" in meta:
            err(where, "sets metadata.namespace; the manifests must stay namespace-agnostic")
        if meta.get("name") in by_kind.setdefault(d.get("kind"), {}):
            err(where, "defined twice")
        by_kind[d.get("kind")][meta.get("name")] = d
        if "app.kubernetes.io/name" not in meta.get("labels", {}):
            err(where, "has no app.kubernetes.io/name label")

    for kind in ("Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                 "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy", "PrometheusRule"):
        if not by_kind.get(kind):
            err("kustomization", f"renders no {kind}")

    # Secrets are created out of band; their names and keys are documented in
    # secret.example.yaml, which the deployments must agree with.
    secrets: dict[str, set[str]] = {}
    ex = kdir / "secret.example.yaml"
    for d in load_docs(ex):
        secrets[d["metadata"]["name"]] = set(d.get("stringData", {})) | set(d.get("data", {}))
    # Optional keys are documented as comments (`# KEY: ...`) in the example.
    documented = set(re.findall(r"^\s*#\s*([A-Za-z0-9_.-]+):", ex.read_text(), re.M))
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    if "secret.example.yaml" in kust.get("resources", []):
        err("kustomization.yaml", "must not include secret.example.yaml (placeholder credentials)")

    images = {i["name"]: f"{i.get('newName', i['name'])}:{i.get('newTag', 'latest')}"
              for i in kust.get("images", [])}
    env_names = known_env(root)
    entry = (root / "deploy/docker-entrypoint.sh").read_text()
    entry_cmds = set(re.findall(r"^\s*([a-z][a-z-]*)\s*\|", entry, re.M)) - {"help"}
    configmaps = by_kind.get("ConfigMap", {})
    deployments = by_kind.get("Deployment", {})
    pod_ports: dict[str, dict[str, int]] = {}

    for name, dep in deployments.items():
        where = f"Deployment/{name}"
        spec = dep["spec"]
        tmpl = spec["template"]
        tlabels = tmpl["metadata"].get("labels", {})
        if not matches(spec["selector"].get("matchLabels", {}), tlabels):
            err(where, "selector does not match the pod template labels")
        pspec = tmpl["spec"]
        psc = pspec.get("securityContext", {})
        if not psc.get("runAsNonRoot"):
            err(where, "pod securityContext.runAsNonRoot is not true")
        volumes = {v["name"]: v for v in pspec.get("volumes", [])}
        for v in volumes.values():
            cm = v.get("configMap", {}).get("name")
            if cm and cm not in configmaps:
                err(where, f"volume `{v['name']}` mounts ConfigMap `{cm}`, which is not rendered")
        ports: dict[str, int] = {}
        env_all: dict[str, str] = {}
        for c in pspec["containers"]:
            cwhere = f"{where} container {c['name']}"
            for p in c.get("ports", []):
                if "name" not in p:
                    err(cwhere, f"port {p['containerPort']} has no name")
                else:
                    ports[p["name"]] = p["containerPort"]
            args = c.get("args") or c.get("command") or []
            if not args or args[0] not in entry_cmds:
                err(cwhere, f"args {args} do not start with an entrypoint command {sorted(entry_cmds)}")
            # `switchyard` itself when rendered without kustomize (fallback).
            if c.get("image") not in ("switchyard", images.get("switchyard")):
                err(cwhere, f"image `{c.get('image')}` is not the kustomization's `switchyard` image "
                            f"({images.get('switchyard')})")
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem"):
                err(cwhere, "readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                err(cwhere, "allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                err(cwhere, "does not drop ALL capabilities")
            res = c.get("resources", {})
            for k in ("cpu", "memory"):
                if k not in res.get("requests", {}):
                    err(cwhere, f"no resources.requests.{k}")
            if "memory" not in res.get("limits", {}):
                err(cwhere, "no resources.limits.memory")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                pr = c.get(probe)
                if not pr:
                    err(cwhere, f"no {probe}")
                    continue
                hg = pr.get("httpGet", {})
                if hg.get("path") != path:
                    err(cwhere, f"{probe} path is {hg.get('path')!r}, expected {path}")
                port = hg.get("port")
                if isinstance(port, str) and port not in ports:
                    err(cwhere, f"{probe} uses port `{port}`, which the container does not declare")
            if c.get("startupProbe", {}).get("httpGet", {}).get("port") not in (None, *ports, *ports.values()):
                err(cwhere, "startupProbe port is not a container port")
            for e in c.get("env", []):
                env_all[e["name"]] = e.get("value", "")
                if e["name"] not in env_names:
                    err(cwhere, f"sets `{e['name']}`, which neither the contract nor the code knows")
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    if ref["name"] not in secrets:
                        err(cwhere, f"secretKeyRef to `{ref['name']}`, not described in secret.example.yaml")
                    elif ref["key"] not in secrets[ref["name"]] and not (
                            ref.get("optional") and ref["key"] in documented):
                        err(cwhere, f"secretKeyRef key `{ref['key']}` is not in secret.example.yaml")
            for ef in c.get("envFrom", []):
                sname = ef.get("secretRef", {}).get("name")
                if sname and sname not in secrets:
                    err(cwhere, f"envFrom Secret `{sname}` is not described in secret.example.yaml")
                for key in secrets.get(sname, ()):
                    if key not in env_names:
                        err("secret.example.yaml", f"`{sname}` key `{key}` becomes an env var nobody reads")
            for vm in c.get("volumeMounts", []):
                if vm["name"] not in volumes:
                    err(cwhere, f"mounts unknown volume `{vm['name']}`")
                if "subPath" in vm and volumes.get(vm["name"], {}).get("configMap"):
                    err(cwhere, "mounts a ConfigMap with subPath: it would never be updated (no hot reload)")
                if vm["name"] in volumes and volumes[vm["name"]].get("configMap"):
                    cm = configmaps.get(volumes[vm["name"]]["configMap"]["name"], {})
                    topo = env_all.get("SWITCHYARD_TOPOLOGY")
                    if topo and Path(topo).parent == Path(vm["mountPath"]):
                        if Path(topo).name not in cm.get("data", {}):
                            err(cwhere, f"SWITCHYARD_TOPOLOGY={topo} but the ConfigMap has no key {Path(topo).name}")
            if "SWITCHYARD_TOPOLOGY" in env_all:
                topo_dir = str(Path(env_all["SWITCHYARD_TOPOLOGY"]).parent)
                if not any(vm["mountPath"] == topo_dir for vm in c.get("volumeMounts", [])):
                    err(cwhere, f"SWITCHYARD_TOPOLOGY points into {topo_dir}, where nothing is mounted")
            admin = env_all.get("SWITCHYARD_ADMIN_LISTEN")
            if admin and int(admin.rsplit(":", 1)[1]) != ports.get("admin"):
                err(cwhere, f"SWITCHYARD_ADMIN_LISTEN={admin} but the `admin` port is {ports.get('admin')}")
            listen = env_all.get("SWITCHYARD_LISTEN")
            if listen and int(listen.rsplit(":", 1)[1]) != ports.get("client"):
                err(cwhere, f"SWITCHYARD_LISTEN={listen} but the `client` port is {ports.get('client')}")
            if args and args[0] == "gateway":
                drain = int(env_all.get("SWITCHYARD_DRAIN_SECONDS") or 20)
                grace = pspec.get("terminationGracePeriodSeconds", 30)
                # The preStop delay runs before SIGTERM and counts against
                # the grace period: endpoints are removed while it sleeps.
                pre_stop = 0
                cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                if len(cmd) == 2 and cmd[0].endswith("sleep") and cmd[1].isdigit():
                    pre_stop = int(cmd[1])
                else:
                    err(cwhere, "needs a preStop hook `[/bin/sleep, N]` so endpoints are removed before SIGTERM")
                if grace < pre_stop + drain + 10:
                    err(where, f"terminationGracePeriodSeconds {grace} must exceed preStop ({pre_stop}s) + drain ({drain}s) by >= 10s")
        pod_ports[name] = ports

    def deployments_selected_by(selector: dict) -> list[str]:
        return [n for n, d in deployments.items()
                if matches(selector, d["spec"]["template"]["metadata"].get("labels", {}))]

    services = by_kind.get("Service", {})
    for name, svc in services.items():
        where = f"Service/{name}"
        sel = deployments_selected_by(svc["spec"].get("selector", {}))
        if len(sel) != 1:
            err(where, f"selects {len(sel)} deployments ({sel}), expected exactly one")
            continue
        ports = pod_ports[sel[0]]
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if (isinstance(tp, str) and tp not in ports) or (isinstance(tp, int) and tp not in ports.values()):
                err(where, f"port {p.get('name')} targets `{tp}`, which Deployment/{sel[0]} does not expose")

    for name, sm in by_kind.get("ServiceMonitor", {}).items():
        where = f"ServiceMonitor/{name}"
        sel = [n for n, s in services.items()
               if matches(sm["spec"]["selector"].get("matchLabels", {}), s["metadata"].get("labels", {}))]
        if len(sel) != 1:
            err(where, f"selects {len(sel)} Services ({sel}), expected exactly one")
            continue
        svc_ports = {p.get("name") for p in services[sel[0]]["spec"]["ports"]}
        allowed_keys = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                        "honorTimestamps", "relabelings", "metricRelabelings", "tlsConfig", "params",
                        "bearerTokenSecret", "authorization", "basicAuth", "followRedirects", "enableHttp2",
                        "proxyUrl", "filterRunning"}
        for ep in sm["spec"].get("endpoints", []):
            if set(ep) - allowed_keys:
                err(where, f"unknown endpoint fields {sorted(set(ep) - allowed_keys)}")
            if ep.get("port") not in svc_ports:
                err(where, f"endpoint port `{ep.get('port')}` is not a port of Service/{sel[0]}")
            if ep.get("path", "/metrics") != "/metrics":
                err(where, f"endpoint path {ep.get('path')} is not /metrics")

    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        where = f"HorizontalPodAutoscaler/{name}"
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            err(where, f"scales {ref}, which is not a rendered Deployment")
        elif "replicas" in deployments[ref["name"]]["spec"]:
            warn(where, f"Deployment/{ref['name']} sets replicas; `kubectl apply` will fight the HPA")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            err(where, "minReplicas > maxReplicas")
        if hpa["spec"].get("minReplicas", 1) < 2:
            warn(where, "minReplicas < 2: a single gateway cannot drain to a peer")
        for m in hpa["spec"].get("metrics", []):
            if m.get("type") == "Resource":
                rname = m["resource"]["name"]
                for c in deployments.get(ref.get("name"), {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                    if rname not in c.get("resources", {}).get("requests", {}):
                        err(where, f"scales on {rname} utilisation but container {c['name']} requests no {rname}")

    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        sel = deployments_selected_by(pdb["spec"]["selector"].get("matchLabels", {}))
        if len(sel) != 1:
            err(f"PodDisruptionBudget/{name}", f"selects {len(sel)} deployments, expected one")

    for name, np_ in by_kind.get("NetworkPolicy", {}).items():
        where = f"NetworkPolicy/{name}"
        sel = deployments_selected_by(np_["spec"]["podSelector"].get("matchLabels", {}))
        if len(sel) != 1:
            err(where, f"selects {len(sel)} deployments, expected one")
            continue
        ports = pod_ports[sel[0]]
        covered = set()
        for rule in np_["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if isinstance(p.get("port"), str) and p["port"] not in ports:
                    err(where, f"ingress names port `{p['port']}`, which Deployment/{sel[0]} lacks")
                covered.add(p.get("port"))
        for pname in ports:
            if pname not in covered and ports[pname] not in covered:
                err(where, f"no ingress rule admits port `{pname}` of Deployment/{sel[0]}")

    # topology ConfigMap
    cm = configmaps.get("switchyard-topology")
    if cm is None:
        err("ConfigMap/switchyard-topology", "missing")
    else:
        text = cm.get("data", {}).get("topology.json", "")
        topo = check_topology("ConfigMap/switchyard-topology", text)
        if topo is not None:
            (out / "topology.json").write_text(text)
            chans = {c["Topic"]: c for h in topo.get("Hubs", []) for c in h.get("Channels", [])}
            for topic in ("News", "Chat", "Notifications"):
                if topic not in chans:
                    err("ConfigMap/switchyard-topology", f"the example lacks the `{topic}` topic")
            news = chans.get("News", {})
            if news.get("Name") != "News-[ScopeValue]" or news.get("LookBack", {}).get("TtlPeriodType") != "CalendarDay":
                err("ConfigMap/switchyard-topology", "News should be the seed's `News-[ScopeValue]` with a CalendarDay lookback")
            if not chans.get("Chat", {}).get("IsPublishableByUser"):
                err("ConfigMap/switchyard-topology", "Chat should be publishable by users")
            if chans.get("Notifications", {}).get("Filters"):
                err("ConfigMap/switchyard-topology", "Notifications should have no filters")


# ---------------------------------------------------------------------------
# Grafana dashboard
# ---------------------------------------------------------------------------

GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                    "__range_ms", "__dashboard", "__from", "__to"}


def check_dashboard(root: Path, cat: Catalog, out: Path) -> None:
    path = root / "deploy/grafana/switchyard.json"
    where = "grafana/switchyard.json"
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        err(where, f"not valid JSON: {e}")
        return
    for key in ("title", "uid", "schemaVersion", "panels", "templating"):
        if key not in dash:
            err(where, f"missing `{key}`")
    tvars = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if tvars.get("datasource", {}).get("type") != "datasource" or tvars["datasource"].get("query") != "prometheus":
        err(where, "needs a `datasource` template variable of type datasource (prometheus)")
    for v in ("namespace", "instance"):
        if v not in tvars:
            err(where, f"needs a `{v}` template variable")
    ids: set[int] = set()
    rects: list[tuple[str, int, int, int, int]] = []
    used: set[str] = set()
    rules = []
    for p in dash.get("panels", []):
        pw = f"{where} panel {p.get('id')} '{p.get('title')}'"
        if p.get("id") in ids:
            err(pw, "duplicate panel id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
            err(pw, f"bad gridPos {g}")
        else:
            for other, x, y, w, h in rects:
                if g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]:
                    err(pw, f"overlaps panel '{other}'")
            rects.append((p.get("title"), g["x"], g["y"], g["w"], g["h"]))
        if p.get("type") == "row":
            continue
        ds = p.get("datasource", {})
        if ds.get("uid") not in ("${datasource}", "$datasource"):
            err(pw, "panel datasource is not the ${datasource} variable")
        targets = p.get("targets", [])
        if not targets:
            err(pw, "has no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            err(pw, "duplicate refId")
        for t in targets:
            tw = f"{pw} query {t.get('refId')}"
            expr = t.get("expr", "")
            if not expr.strip():
                err(tw, "empty expr")
                continue
            for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
                if var not in tvars and var not in GRAFANA_BUILTINS:
                    err(tw, f"uses ${var}, which is no template variable")
            for m in SELECTOR_RE.finditer(expr):
                if m.group(1) and m.group(1).startswith("switchyard_"):
                    for v in ("namespace", "instance"):
                        if f"${v}" not in m.group(2):
                            err(tw, f"`{m.group(1)}` is not filtered by ${v}")
            used |= check_promql(cat, tw, expr, t.get("legendFormat"))
            concrete = (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
                        .replace("$__range", "1h").replace("$namespace", ".*").replace("$instance", ".*"))
            rules.append({"record": f"dashboard:panel{p.get('id')}:{t.get('refId')}", "expr": concrete})
    for name, v in tvars.items():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            inner = re.match(r"label_values\((.*),\s*([a-zA-Z_]+)\)\s*$", q)
            if not inner:
                err(f"{where} variable {name}", f"unexpected query {q!r}")
            else:
                used |= check_promql(cat, f"{where} variable {name}", inner.group(1))
    for m in cat.metrics:
        if m.startswith("switchyard_") and m not in used:
            err(where, f"no panel shows `{m}`")
    (out / "dashboard.rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))


# ---------------------------------------------------------------------------
# alert rules
# ---------------------------------------------------------------------------

def check_alerts(root: Path, cat: Catalog, out: Path) -> None:
    path = root / "deploy/prometheus/alerts.yaml"
    doc = yaml.safe_load(path.read_text())
    where = "prometheus/alerts.yaml"
    if doc.get("kind") != "PrometheusRule" or doc.get("apiVersion") != "monitoring.coreos.com/v1":
        err(where, "is not a monitoring.coreos.com/v1 PrometheusRule")
    readme = (root / "deploy/README.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+\s+(.+)$", readme, re.M)}
    spec = doc.get("spec", {})
    names = set()
    for g in spec.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            aw = f"{where} {name}"
            if name in names:
                err(aw, "defined twice")
            names.add(name)
            check_promql(cat, aw, r.get("expr", ""))
            if "alert" not in r:
                continue
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                err(aw, "severity label must be critical, warning or info")
            ann = r.get("annotations", {})
            for k in ("summary", "description", "runbook_url"):
                if k not in ann:
                    err(aw, f"no `{k}` annotation")
            anchor = ann.get("runbook_url", "").rsplit("#", 1)[-1]
            if anchor != name.lower():
                err(aw, f"runbook_url anchor `#{anchor}` should be `#{name.lower()}`")
            if name.lower() not in headings:
                err(aw, "deploy/README.md has no runbook heading for it")
    for required in ("SwitchyardBridgePaused", "SwitchyardBridgeStuck", "SwitchyardBridgeDLQ",
                     "SwitchyardBridgeEventLagHigh", "SwitchyardGatewayBackfillStorm",
                     "SwitchyardGatewayRedisReconnectLoop", "SwitchyardNotReady"):
        if required not in names:
            err(where, f"missing alert {required}")
    (out / "alerts.rules.yaml").write_text(yaml.safe_dump(spec))
    stripped = json.loads(json.dumps(spec))
    for g in stripped.get("groups", []):
        for r in g.get("rules", []):
            r.pop("annotations", None)
    (out / "test").mkdir(exist_ok=True)
    (out / "test/alerts.rules.yaml").write_text(yaml.safe_dump(stripped))


# ---------------------------------------------------------------------------
# Dockerfile and workspace
# ---------------------------------------------------------------------------

def workspace(root: Path) -> dict[str, tuple[Path, set[str]]]:
    """package name -> (dir, binary names)."""
    ws = tomllib.loads((root / "Cargo.toml").read_text())
    pkgs = {}
    for member in ws["workspace"]["members"]:
        d = root / member
        manifest = tomllib.loads((d / "Cargo.toml").read_text())
        name = manifest["package"]["name"]
        bins = {b["name"] for b in manifest.get("bin", [])}
        paths = {b.get("path") for b in manifest.get("bin", [])}
        if (d / "src/main.rs").exists() and "src/main.rs" not in paths:
            bins.add(name)
        bins |= {p.stem for p in (d / "src/bin").glob("*.rs")}
        bins |= {p.name for p in (d / "src/bin").glob("*/main.rs") for p in [p.parent]}
        pkgs[name] = (d, bins)
    return pkgs


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        cur += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            lines.append(cur.strip())
            cur = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def ignored(patterns: list[str], path: str) -> bool:
    result = False
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        pat = pat.strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatchcase(x, pat) or (pat.startswith("**/") and (
            fnmatch.fnmatchcase(x, pat[3:]) or any(fnmatch.fnmatchcase("/".join(x.split("/")[j:]), pat[3:])
                                                  for j in range(len(x.split("/"))))))
                  for x in prefixes)
        if hit:
            result = not neg
    return result


def check_dockerfile(root: Path, rendered: Path) -> None:
    where = "Dockerfile"
    text = (root / "deploy/Dockerfile").read_text()
    ins = dockerfile_instructions(text)
    stages = [a.split()[-1] for k, a in ins if k == "FROM" and " AS " in a.upper()]
    if "builder" not in stages or "runtime" not in stages:
        err(where, f"expected stages `builder` and `runtime`, found {stages}")
    froms = [a for k, a in ins if k == "FROM"]
    if not any("debian:" in f and "slim" in f for f in froms[-1:]):
        err(where, "the final stage is not debian slim")
    pkgs = workspace(root)
    build = " ".join(a for k, a in ins if k == "RUN" and "cargo build" in a)
    if "--locked" not in build or "--release" not in build:
        err(where, "cargo build must use --release --locked")
    if "type=cache" not in build:
        err(where, "cargo build has no BuildKit cache mount")
    selected = re.findall(r"-p\s+([a-z0-9_-]+)", build)
    for p in selected:
        if p not in pkgs:
            err(where, f"builds package `{p}`, which is not a workspace member")
    available = set().union(*(pkgs[p][1] for p in selected if p in pkgs)) if selected else set()
    for b in sorted(set(re.findall(r"target/release/([a-z0-9_-]+)", build))):
        if b in available:
            continue
        if b == "switchyard-topology" and "switchyard-channels" in pkgs and not pkgs["switchyard-channels"][1]:
            warn(where, "switchyard-channels declares no binary yet; the image build needs its "
                        "`switchyard-topology` bin (contract README: channels/ ships the CLI)")
        else:
            err(where, f"copies target/release/{b}, which no package selected with -p builds")
    user = [a for k, a in ins if k == "USER"]
    if not user or not re.match(r"^\d+(:\d+)?$", user[-1]) or user[-1].split(":")[0] == "0":
        err(where, f"final USER must be a numeric non-root uid, got {user[-1:] or 'none'}")
    entry = [a for k, a in ins if k == "ENTRYPOINT"]
    if not entry or not entry[-1].startswith("["):
        err(where, "ENTRYPOINT must use the exec (JSON) form so the binary gets SIGTERM")
    for k, a in ins:
        if k == "COPY" and "--from" not in a:
            srcs = [s for s in a.split() if not s.startswith("--")][:-1]
            for s in srcs:
                if s != "." and not (root / s).exists():
                    err(where, f"COPY source {s} does not exist")
    exposed = {int(p.split("/")[0]) for k, a in ins if k == "EXPOSE" for p in a.split()}
    docs = load_docs(rendered)
    uid = user[-1].split(":")[0] if user else None
    for d in docs:
        if d.get("kind") == "Deployment":
            pspec = d["spec"]["template"]["spec"]
            if str(pspec.get("securityContext", {}).get("runAsUser")) != uid:
                err(f"Deployment/{d['metadata']['name']}", f"runAsUser differs from the image's USER {uid}")
            for c in pspec["containers"]:
                for p in c.get("ports", []):
                    if p["containerPort"] not in exposed:
                        err(where, f"does not EXPOSE {p['containerPort']} (Deployment/{d['metadata']['name']})")
    # The build context is the repo root: the ignore file must keep what
    # cargo needs (every member, the lock file, embedded migrations).
    ign = root / "deploy/Dockerfile.dockerignore"
    patterns = [ln.strip() for ln in ign.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock", "migrations/0001.sql", "deploy/docker-entrypoint.sh"]
    for name, (d, _) in pkgs.items():
        rel = d.relative_to(root).as_posix()
        needed += [f"{rel}/Cargo.toml", f"{rel}/src/lib.rs"]
    needed += [p.relative_to(root).as_posix() for p in (root / "proto").rglob("*.proto")]
    for n in needed:
        if ignored(patterns, n):
            err("Dockerfile.dockerignore", f"excludes {n}, which the build needs")
    for n in ("target/release/x", "bridge/target/x", ".git/HEAD", "loadtest/node_modules/x", ".local/venv"):
        if not ignored(patterns, n):
            warn("Dockerfile.dockerignore", f"does not exclude {n}")


# ---------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    cur = ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("["):
            cur = s.strip("[]")
            continue
        k, _, v = s.partition("=")
        sections.setdefault(cur, {}).setdefault(k.strip(), []).append(v.strip())
    return sections


def seconds(v: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?", v):
        total += float(num) * {"ms": 0.001, "s": 1, "": 1, "min": 60, "m": 60, "h": 3600}[unit or ""]
    return total


def check_systemd(root: Path) -> None:
    sdir = root / "deploy/systemd"
    env_names = known_env(root)
    for binary in ("switchyard-bridge", "switchyard-gateway"):
        unit = sdir / f"{binary}.service"
        where = f"systemd/{unit.name}"
        if not unit.exists():
            err(where, "missing")
            continue
        u = parse_unit(unit)
        svc = u.get("Service", {})
        if not any(binary in x for x in svc.get("ExecStart", [])):
            err(where, f"ExecStart does not run {binary}")
        if svc.get("KillSignal", [""])[-1] != "SIGTERM":
            err(where, "KillSignal is not SIGTERM")
        if not svc.get("EnvironmentFile"):
            err(where, "no EnvironmentFile")
        if "TimeoutStopSec" not in svc:
            err(where, "no TimeoutStopSec")
        if "LimitNOFILE" not in svc:
            err(where, "no LimitNOFILE")
        short = binary.split("-")[1]
        example = sdir / f"{short}.env.example"
        env = {}
        for n, line in enumerate(example.read_text().splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            k, sep, v = s.partition("=")
            if not sep:
                err(f"systemd/{example.name}:{n}", "not KEY=value")
                continue
            env[k] = v
            if k not in env_names:
                err(f"systemd/{example.name}:{n}", f"`{k}` is known to neither the contract nor the code")
        if short == "gateway":
            drain = float(env.get("SWITCHYARD_DRAIN_SECONDS", 20))
            stop = seconds(svc.get("TimeoutStopSec", ["0"])[-1])
            if stop < drain + 10:
                err(where, f"TimeoutStopSec {stop}s must exceed SWITCHYARD_DRAIN_SECONDS ({drain}s) by >= 10s")
            if int(svc.get("LimitNOFILE", ["0"])[-1].split(":")[-1]) < 65536:
                err(where, "LimitNOFILE below 65536 caps the gateway at a few ten thousand clients")


def main() -> int:
    root, rendered, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), Path(sys.argv[3])
    cat = Catalog(root / "deploy/metrics.txt")
    for step in (lambda: check_kubernetes(root, rendered, out), lambda: check_dashboard(root, cat, out),
                 lambda: check_alerts(root, cat, out), lambda: check_dockerfile(root, rendered),
                 lambda: check_systemd(root)):
        try:
            step()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            err("validate.py", f"could not check a file's structure: {type(e).__name__}: {e}")
    for w in WARNINGS:
        print(f"  WARN  {w}")
    for e in ERRORS:
        print(f"  FAIL  {e}")
    print(f"  consistency checks: {len(ERRORS)} problem(s), {len(WARNINGS)} warning(s)")
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
