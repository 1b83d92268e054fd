"""The operator kit under config/: Prometheus alert rules (promtool check and unit
tests), the Grafana dashboard, the systemd unit and the container recipe. Every PromQL
expression, in the rules and on the dashboard, may name only metrics the proxy
exports (src/metrics.rs `METRICS`, which README's table must match).

promtool comes from Debian's `prometheus` package and systemd-analyze from systemd;
proto-tests/setup.sh installs promtool. Nothing here installs anything."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import harness

REPO = harness.REPO
KIT = REPO / "config"
RULES = KIT / "prometheus" / "kafka-tee-alerts.yml"
RULE_TESTS = KIT / "prometheus" / "kafka-tee-alerts.test.yml"
DASHBOARD = KIT / "grafana" / "kafka-tee.json"
UNIT = KIT / "systemd" / "kafka-tee.service"
CONTAINERFILE = KIT / "container" / "Containerfile"

# Series Prometheus itself adds to every scrape, which rules may use (KafkaTeeDown).
SCRAPE_SERIES = {"up"}


# ------------------------------------------------------------ exported metrics


def exported_metrics() -> dict[str, str]:
    """name -> kind ("Counter", "Gauge", "Histogram") from src/metrics.rs METRICS.
    The proxy has no subcommand that lists its metrics, and /metrics shows a labelled
    metric only once it has a series, so the table in the source is the full list."""
    src = (REPO / "src" / "metrics.rs").read_text()
    table = src.split("pub const METRICS: &[MetricDef] = &[", 1)[1].split("\n];", 1)[0]
    found = dict(re.findall(r'def\(\s*"(kafka_tee_[a-z0-9_]+)",\s*(Counter|Gauge|Histogram),',
                            table))
    readme = (REPO / "README.md").read_text()
    in_readme = set(re.findall(r"^\| `(kafka_tee_[a-z0-9_]+)` \|", readme, re.M))
    # Two independent lists that must agree: a parse that broke would show here.
    assert found and set(found) == in_readme, (
        f"src/metrics.rs and README's metrics table differ: "
        f"only in source {sorted(set(found) - in_readme)}, "
        f"only in README {sorted(in_readme - set(found))}")
    return found


# PromQL functions and aggregations (Prometheus 2.x), and keywords.
FUNCTIONS = set("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
days_in_month deg delta deriv exp floor histogram_count histogram_fraction
histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters hour
idelta increase irate label_join label_replace last_over_time ln log10 log2
mad_over_time max_over_time min_over_time minute month pi predict_linear
present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort
sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp
vector year
sum min max avg group stddev stdvar count count_values bottomk topk quantile
""".split())
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. Strings, label matchers, ranges,
    grouping label lists and Grafana variables are taken out first; what is left that
    is not a function, aggregation, keyword or number is a metric name. A name that is
    called like a function but is not one is returned too, so a typo in a function
    name is reported instead of passing unseen."""
    e = re.sub(r"\$\{[^}]*\}|\$\w+", " ", expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', e)
    e = re.sub(r"\{[^{}]*\}", " ", e)
    e = re.sub(r"\[[^\[\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", r" \1 ", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)", e):
        word = m.group(1)
        if word in FUNCTIONS or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def unknown_metrics(exprs: list[str], exported: dict[str, str]) -> dict[str, set[str]]:
    """expr -> the names in it the proxy does not export. A histogram's _bucket, _sum
    and _count series count as the histogram."""
    bad = {}
    for expr in exprs:
        unknown = set()
        for name in metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in exported or name in SCRAPE_SERIES:
                continue
            if base != name and exported.get(base) == "Histogram":
                continue
            unknown.add(name)
        if unknown:
            bad[expr] = unknown
    return bad


def rule_exprs(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def test_metric_name_extraction():
    assert metric_names(
        'sum by (instance, topic) (rate(kafka_tee_a_total{x="y", z=~"$v"}[$__rate_interval]))'
        ' / on (instance) group_left kafka_tee_b > 0.5 and up{job="kafka-tee"} offset 5m'
    ) == {"kafka_tee_a_total", "kafka_tee_b", "up"}
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(m_bucket[5m])))') == {"m_bucket"}
    assert metric_names("time() - kafka_tee_start_time_seconds") == {"kafka_tee_start_time_seconds"}
    # A misspelt function is reported rather than passed over.
    assert metric_names("rates(kafka_tee_a_total[5m])") == {"rates", "kafka_tee_a_total"}
    assert metric_names('1e3 * 0x10 + vector(0) or absent(up{job="x"})') == {"up"}


# ------------------------------------------------------------ Prometheus rules


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: run proto-tests/setup.sh (it installs "
                    "Debian's prometheus package, which ships promtool)", pytrace=False)
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_alert_rules_pass_promtool_check(promtool):
    done = run(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alert_rules_pass_their_unit_tests(promtool):
    done = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_can_fail(promtool, tmp_path):
    """A rule changed so it no longer fires makes its unit test fail."""
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    rules = RULES.read_text().replace(
        "kafka_tee_replication_oldest_pending_seconds) > 60",
        "kafka_tee_replication_oldest_pending_seconds) > 6000")
    assert rules != RULES.read_text()
    (tmp_path / RULES.name).write_text(rules)
    done = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0 and "KafkaTeeReplicationBehind" in done.stdout + done.stderr


def test_every_alert_is_seen_firing_in_the_unit_tests():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])
             if t.get("exp_alerts")}
    assert alerts - fired == set(), f"alerts no unit test sees firing: {alerts - fired}"
    # The alert areas operators asked for.
    for name in ["KafkaTeeDown", "KafkaTeeDC1Errors", "KafkaTeeReplicationBehind",
                 "KafkaTeeReplicationStalled", "KafkaTeeDC2Unreachable",
                 "KafkaTeeDC2ProduceErrors", "KafkaTeePendingBytesNearFull",
                 "KafkaTeeWindowFull", "KafkaTeeTLSHandshakeFailures"]:
        assert name in alerts, name


def test_alert_rules_name_only_exported_metrics():
    exprs = rule_exprs(RULES)
    assert len(exprs) >= 15
    assert unknown_metrics(exprs, exported_metrics()) == {}


def test_rules_check_catches_an_unknown_metric(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES.read_text().replace("kafka_tee_topics_held", "kafka_tee_topic_held"))
    bad = unknown_metrics(rule_exprs(rules), exported_metrics())
    assert {n for names in bad.values() for n in names} == {"kafka_tee_topic_held"}


# ----------------------------------------------------------------- Grafana


def dashboard_exprs(dash: dict) -> list[str]:
    """Every query on the dashboard: panel targets and the variables' label_values()."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                out.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q)
        assert m, f"variable {var['name']}: not a label_values() query: {q}"
        out.append(m.group(1))
    return out


def test_dashboard_names_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 30, len(exprs)
    exported = exported_metrics()
    assert unknown_metrics(exprs, exported) == {}
    # The dashboard covers the three sides: clients, DC2 and what should stay 0.
    used = set().union(*(metric_names(e) for e in exprs))
    for name in ["kafka_tee_requests_total", "kafka_tee_replication_lag_records",
                 "kafka_tee_tls_handshake_failures_total", "kafka_tee_dc2_errors_total",
                 "kafka_tee_data_lost_records_total"]:
        assert name in used, name


def test_dashboard_check_catches_an_unknown_metric(tmp_path):
    """A dashboard that names a metric the proxy does not export fails the check,
    whether the name is made up or a histogram suffix on a gauge."""
    exported = exported_metrics()
    text = DASHBOARD.read_text()
    for wrong in ["kafka_tee_replication_lagg_records", "kafka_tee_pending_bytes_bucket"]:
        mutated = text.replace("kafka_tee_replication_lag_records{", wrong + "{", 1)
        assert mutated != text
        copy = tmp_path / "kafka-tee.json"
        copy.write_text(mutated)
        bad = unknown_metrics(dashboard_exprs(json.loads(copy.read_text())), exported)
        assert {n for names in bad.values() for n in names} == {wrong}, bad


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    """promtool parses each query, Grafana's variables filled in, as a recording rule."""
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    fill = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*", "$topic": ".*"}
    rules = []
    for i, e in enumerate(exprs):
        for var, value in fill.items():
            e = e.replace(var, value)
        assert "$" not in e, f"unknown Grafana variable in {e}"
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_importable_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p.get("targets"), p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


# ------------------------------------------------------------------ systemd


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_systemd_unit_is_hardened_and_matches_the_proxy():
    s = unit_settings()
    for key, value in [("DynamicUser", "yes"), ("ProtectSystem", "strict"),
                       ("StateDirectory", "kafka-tee"), ("Restart", "on-failure"),
                       ("NoNewPrivileges", "yes"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes")]:
        assert s.get(key) == [value], f"{key}={s.get(key)}"
    assert int(s["LimitNOFILE"][0]) >= 20000
    exec_start = shlex.split(s["ExecStart"][0])
    assert exec_start[0] == "/usr/local/bin/kafka-tee"
    # The state directory systemd creates is the one the proxy writes to.
    assert exec_start[exec_start.index("--state-dir") + 1] == "/var/lib/kafka-tee"
    # TimeoutStopSec leaves room for the shutdown grace period (10 s by default).
    assert int(s["TimeoutStopSec"][0].rstrip("s")) > 10
    # ExecReload would send SIGHUP, which the proxy does not handle (it would exit).
    handles_hup = any("hangup()" in p.read_text() for p in (REPO / "src").rglob("*.rs"))
    assert ("ExecReload" in s) == handles_hup


def test_systemd_unit_passes_systemd_analyze(tmp_path, kafka_tee_bin):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (it comes with systemd)")
    # verify checks that ExecStart's binary exists: point it at the one built here.
    unit = tmp_path / "kafka-tee.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/kafka-tee", str(kafka_tee_bin)))
    done = run(analyze, "verify", str(unit))
    # Unknown or misspelt directives are only warnings (exit 0): fail on any output.
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), \
        done.stdout + done.stderr
    done = run(analyze, "security", "--offline=true", str(unit))
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout + done.stderr)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {done.stderr}")
    assert float(m.group(1)) <= 2.0, done.stdout


# --------------------------------------------------------------- container


def containerfile_instructions() -> list[tuple[str, str]]:
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def copy_sources() -> list[str]:
    """The build-context paths of every COPY without --from."""
    sources = []
    for word, rest in containerfile_instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        sources += args[:-1]
    return sources


def test_containerfile_shape():
    ins = containerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) == 2 and froms[0].startswith("rust:1.95") and " AS " in froms[0].upper()
    assert re.match(r"debian:\S*slim", froms[1]), froms[1]
    # The runtime stage runs as a non-root user.
    users = [rest for word, rest in ins if word == "USER"]
    assert users and not users[-1].startswith(("root", "0")), users
    exposed = " ".join(rest for word, rest in ins if word == "EXPOSE").split()
    assert "9644" in exposed and any(p.startswith("9092") for p in exposed), exposed
    # ENTRYPOINT runs the binary Cargo.toml builds.
    package = re.search(r'^name = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    entry = json.loads(next(rest for word, rest in ins if word == "ENTRYPOINT"))
    assert Path(entry[0]).name == package
    assert any(f"--bin {package}" in rest for word, rest in ins if word == "RUN")
    for src in copy_sources():
        assert (REPO / src).exists(), f"COPY source {src} is not in the repository"


def test_containerfile_copies_enough_to_build(tmp_path):
    """The build stage's COPY lines, replayed into an empty directory, give a tree
    `cargo check --locked` accepts (Cargo wants every declared target to exist)."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is not on PATH")
    ctx = tmp_path / "src"
    ctx.mkdir()
    for word, rest in containerfile_instructions():
        if word == "FROM" and not rest.startswith("rust:"):
            break
        if word != "COPY" or "--from=" in rest:
            continue
        *srcs, dest = shlex.split(rest)
        dest_dir = ctx / dest
        for src in srcs:
            s = REPO / src
            if s.is_dir():
                shutil.copytree(s, dest_dir if not dest.endswith("/") else dest_dir / s.name,
                                dirs_exist_ok=True)
            else:
                target = dest_dir / s.name if dest.endswith("/") else dest_dir
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(s, target)
    done = subprocess.run([cargo, "check", "--locked", "--offline", "--bin", "kafka-tee"],
                          cwd=ctx, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "CARGO_TARGET_DIR": str(REPO / "target")})
    assert done.returncode == 0, done.stderr[-3000:]


def test_containerfile_healthcheck_command(dc1, proxy):
    """The HEALTHCHECK command, pointed at a running proxy's admin port, succeeds;
    against a port nobody listens on, it fails."""
    hc = next(rest for word, rest in containerfile_instructions() if word == "HEALTHCHECK")
    argv = json.loads(hc[hc.index("CMD") + 3:].strip())
    binary = str(harness.kafka_tee_bin())
    p = proxy(dc1.bootstrap, admin=True)
    i = argv.index("--admin")
    up = [binary, *argv[1:i + 1], f"{harness.HOST}:{p.admin_port}", *argv[i + 2:]]
    done = run(*up)
    assert done.returncode == 0, done.stderr
    down = [binary, *argv[1:i + 1], f"{harness.HOST}:{harness.free_port()}", *argv[i + 2:]]
    assert run(*down).returncode != 0
