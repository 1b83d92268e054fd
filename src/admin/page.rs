//! The human-readable status page at `/`.

use crate::status::{StatusReport, human_bytes, human_duration};

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The human-readable page at `/`, refreshed by the browser every 5 seconds.
pub fn status_page(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>kafka-tee</title><style>\
         body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin:.5em 0 1.2em}}\
         td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}td.n{{text-align:right}}\
         .ok{{color:#070}}.bad{{color:#b00;font-weight:bold}}</style></head><body>\n"
    );
    let _ = writeln!(h, "<h1>kafka-tee {}</h1>", esc(&r.version));
    let readiness = if r.ready {
        "<span class=\"ok\">ready</span>".to_string()
    } else {
        format!(
            "<span class=\"bad\">not ready: {}</span>",
            esc(&r.ready_reason)
        )
    };
    let _ = writeln!(
        h,
        "<p>Up {} &middot; {readiness}</p>",
        esc(&human_duration(r.uptime_seconds))
    );

    let _ = writeln!(
        h,
        "<h2>Listeners</h2><table><tr><th>what</th><th>address</th><th>forwards to</th></tr>"
    );
    let _ = writeln!(
        h,
        "<tr><td>bootstrap</td><td>{}</td><td>{}</td></tr>",
        esc(&r.listeners.bootstrap),
        esc(&r.source.join(", "))
    );
    if let Some(a) = &r.listeners.admin {
        let _ = writeln!(h, "<tr><td>admin</td><td>{}</td><td>-</td></tr>", esc(a));
    }
    for b in &r.listeners.brokers {
        let _ = writeln!(
            h,
            "<tr><td>broker {}</td><td>port {}</td><td>{}</td></tr>",
            b.broker_id,
            b.proxy_port,
            esc(&b.upstream)
        );
    }
    let _ = writeln!(h, "</table>");

    let c = &r.connections;
    let _ = writeln!(
        h,
        "<h2>Connections</h2><p>{} open, {} accepted, {} refused at the limit; {} requests forwarded.</p>",
        c.open, c.accepted_total, c.refused_total, r.requests_total
    );

    let rep = &r.replication;
    let _ = writeln!(h, "<h2>Replication</h2>");
    if !rep.enabled {
        let _ = writeln!(h, "<p>Off (no target cluster configured).</p>");
    } else {
        let lost = if rep.data_lost_records_total > 0 {
            format!("<span class=\"bad\">{}</span>", rep.data_lost_records_total)
        } else {
            "0".into()
        };
        let _ = writeln!(
            h,
            "<p>To {}: {} records acked by DC1, {} replicated ({}){}; pending {} of {}; \
             {} batches held for ordering; {} catch-up batches; {} DC2 errors; lost records: {lost}.</p>",
            esc(&r.target.join(", ")),
            rep.acked_records_total,
            rep.replicated_records_total,
            esc(&human_bytes(rep.replicated_bytes_total)),
            rep.records_per_second
                .map(|v| format!(", {v:.1} records/s"))
                .unwrap_or_default(),
            esc(&human_bytes(rep.pending_bytes)),
            esc(&human_bytes(rep.pending_bytes_limit)),
            rep.held_batches,
            rep.catchup_batches_total,
            rep.dc2_errors_total,
        );
        if rep.partitions.is_empty() {
            let _ = writeln!(h, "<p>No per-partition state yet.</p>");
        } else {
            let _ = writeln!(
                h,
                "<table><tr><th>topic</th><th>partition</th><th>in DC2 up to offset</th>\
                 <th>lag records</th><th>lag bytes</th><th>oldest pending</th><th>throughput</th>\
                 <th>state</th></tr>"
            );
            let dash = || "-".to_string();
            for p in &rep.partitions {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                     <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                    esc(&p.topic),
                    p.partition.map_or_else(|| "*".into(), |n| n.to_string()),
                    p.replicated_offset.map_or_else(dash, |o| o.to_string()),
                    p.lag_records.map_or_else(dash, |n| n.to_string()),
                    esc(&p.lag_bytes.map_or_else(dash, human_bytes)),
                    esc(&p.oldest_pending_seconds.map_or_else(dash, human_duration)),
                    p.records_per_second
                        .map_or_else(dash, |v| format!("{v:.1}/s")),
                    esc(&p.state)
                );
            }
            let _ = writeln!(h, "</table>");
        }
    }
    let _ = writeln!(
        h,
        "<p><a href=\"/metrics\">/metrics</a> &middot; <a href=\"/status.json\">/status.json</a> \
         &middot; <a href=\"/healthz\">/healthz</a> &middot; <a href=\"/readyz\">/readyz</a></p>\n</body></html>"
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_names() {
        let r = StatusReport {
            source: vec!["<script>".into()],
            ..Default::default()
        };
        let page = status_page(&r);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
    }
}
