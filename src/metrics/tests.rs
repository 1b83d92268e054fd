use super::*;
use std::collections::BTreeSet;
use std::path::Path;

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `"kafka_tee_..."` string literal in the sources.
fn names_used_in_sources() -> BTreeSet<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&root, &mut files);
    let re = regex::Regex::new(r#""(kafka_tee_[a-z0-9_]+)""#).expect("regex");
    let mut out = BTreeSet::new();
    for f in files {
        if f.ends_with("metrics.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        for c in re.captures_iter(&text) {
            out.insert((c[1].to_string(), f.display().to_string()));
        }
    }
    out
}

#[test]
fn every_metric_used_in_the_code_is_described() {
    let missing: Vec<_> = names_used_in_sources()
        .into_iter()
        .filter(|(name, _)| find(name).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used but not described in src/metrics.rs: {missing:?}"
    );
}

#[test]
fn names_follow_prometheus_conventions() {
    let mut seen = BTreeSet::new();
    for m in METRICS {
        assert!(seen.insert(m.name), "{} listed twice", m.name);
        assert!(m.name.starts_with("kafka_tee_"), "{}", m.name);
        assert!(!m.help.is_empty(), "{} has no help text", m.name);
        match m.kind {
            Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
            Gauge | Histogram => assert!(!m.name.ends_with("_total"), "{}", m.name),
        }
        if m.kind == Histogram {
            assert!(m.name.ends_with("_seconds"), "{}", m.name);
        }
        for l in m.labels {
            assert!(
                [
                    "api",
                    "topic",
                    "code",
                    "reason",
                    "version",
                    "cluster",
                    "stage",
                    "direction",
                    "broker",
                    "cause"
                ]
                .contains(l),
                "{}: label {l} is not in the low-cardinality set",
                m.name
            );
        }
    }
}

#[test]
fn readme_lists_every_metric() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let missing: Vec<_> = METRICS
        .iter()
        .map(|m| m.name)
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "README.md does not list {missing:?}");
}

#[test]
fn install_is_idempotent_and_renders_help_lines() {
    let a = install();
    let b = install();
    metrics::counter!("kafka_tee_requests_total", "api" => "Produce").increment(2);
    let text = a.render();
    assert_eq!(text.lines().count(), b.render().lines().count());
    for m in METRICS.iter().filter(|m| m.labels.is_empty()) {
        assert!(
            text.contains(&format!("# HELP {} ", m.name)),
            "no HELP for {}:\n{text}",
            m.name
        );
        assert!(
            text.contains(&format!("# TYPE {} {}", m.name, m.kind.as_str())),
            "no TYPE for {}",
            m.name
        );
    }
    assert!(text.contains("# HELP kafka_tee_requests_total "));
    let produce = sample(&text, "kafka_tee_requests_total", &[("api", "Produce")]);
    assert!(produce.is_some_and(|v| v >= 2.0), "{text}");
}

#[test]
fn sample_reads_labelled_series() {
    let text = "# HELP x y\n# TYPE x gauge\n\
                x{topic=\"a\"} 3\nx{topic=\"b\",code=\"q\\\"z\"} 4\ny 1.5\nbad line\n";
    assert_eq!(sample(text, "x", &[]), Some(7.0));
    assert_eq!(sample(text, "x", &[("topic", "a")]), Some(3.0));
    assert_eq!(sample(text, "x", &[("code", "q\"z")]), Some(4.0));
    assert_eq!(sample(text, "y", &[]), Some(1.5));
    assert_eq!(sample(text, "z", &[]), None);
}

/// Reads one sample out of Prometheus text: the value of `name` whose labels include
/// every `(key, value)` in `labels`, summed over the series that match. `None` when no
/// series matches. For checking what the recorder renders.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for (series, series_labels, value) in samples(text) {
        if series != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// Every sample line of Prometheus text as (name, labels, value); comments and
/// malformed lines are skipped.
fn samples(text: &str) -> impl Iterator<Item = (&str, Vec<(String, String)>, f64)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (head, value) = line.rsplit_once(' ')?;
        let value: f64 = value.parse().ok()?;
        match head.split_once('{') {
            None => Some((head, Vec::new(), value)),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}')?;
                Some((name, parse_labels(body)?, value))
            }
        }
    })
}

/// Parses `a="x",b="y \"q\""` (the body between braces).
fn parse_labels(body: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
    }
}
