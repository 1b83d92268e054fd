//! The status report as text: the terminal table of `kafka-tee status`, and the
//! human-readable durations and sizes the HTML page shares.

use super::{GroupState, StatusReport};

/// Formats a duration in seconds as "3d 4h", "5m 2s", "12.3s".
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{secs:.1}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Formats a byte count as "512 B", "1.5 KiB", "3.2 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.1}/s"))
}

/// The report as a terminal table, for `kafka-tee status`.
pub fn render_table(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kafka-tee {}  up {}  {}",
        r.version,
        human_duration(r.uptime_seconds),
        if r.ready {
            "READY".to_string()
        } else {
            format!("NOT READY: {}", r.ready_reason)
        }
    );
    let _ = writeln!(
        out,
        "listening {}  brokers {}  connections {} open, {} accepted, {} refused  requests {}",
        r.listeners.bootstrap,
        r.listeners.brokers.len(),
        r.connections.open,
        r.connections.accepted_total,
        r.connections.refused_total,
        r.requests_total
    );
    let rep = &r.replication;
    if !rep.enabled {
        let _ = writeln!(out, "replication: off (no target)");
        return out;
    }
    let _ = writeln!(
        out,
        "replication to {}: acked by DC1 {}  replicated {} ({})  {}  pending {} of {}  held {}  catch-up {}  DC2 errors {}  LOST {}",
        r.target.join(","),
        rep.acked_records_total,
        rep.replicated_records_total,
        human_bytes(rep.replicated_bytes_total),
        rate(rep.records_per_second),
        human_bytes(rep.pending_bytes),
        human_bytes(rep.pending_bytes_limit),
        rep.held_batches,
        rep.catchup_batches_total,
        rep.dc2_errors_total,
        rep.data_lost_records_total,
    );
    if let Some(g) = &r.group {
        let _ = writeln!(out, "{}", group_line(g));
    }
    let _ = writeln!(out);
    if rep.partitions.is_empty() {
        let _ = writeln!(
            out,
            "no per-partition replication state yet (detail: {})",
            rep.detail
        );
        return out;
    }
    // The OWNER column only when some row has an owner (a replication group).
    let owners = rep.partitions.iter().any(|p| p.owner.is_some());
    let mut header = vec![
        "TOPIC",
        "PARTITION",
        "IN DC2 UP TO",
        "LAG RECORDS",
        "LAG BYTES",
        "THROUGHPUT",
        "STATE",
    ];
    if owners {
        header.push("OWNER");
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = rep
        .partitions
        .iter()
        .map(|p| {
            let mut row = vec![
                p.topic.clone(),
                p.partition.map_or_else(|| "*".into(), |n| n.to_string()),
                p.replicated_offset.map_or_else(dash, |o| o.to_string()),
                p.lag_records.map_or_else(dash, |n| n.to_string()),
                p.lag_bytes.map_or_else(dash, human_bytes),
                rate(p.records_per_second),
                p.state.clone(),
            ];
            if owners {
                row.push(p.owner.clone().unwrap_or_else(dash));
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, &w)) in cells.iter().zip(&widths).enumerate() {
            // Text columns left-aligned, numbers right-aligned.
            if i == 0 || i >= 6 {
                let _ = write!(s, "{c:<w$}  ");
            } else {
                let _ = write!(s, "{c:>w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    let _ = writeln!(out, "{}", line(&header));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    if rep.partitions.iter().any(|p| p.partition.is_none()) {
        let _ = writeln!(
            out,
            "(partition * is a whole topic: its lag is known per topic only)"
        );
    }
    out
}

/// "group NAME  generation G  member M (leader)  owns N partitions  rebalances R  last
/// takeover Xs", for [`render_table`].
fn group_line(g: &GroupState) -> String {
    format!(
        "group {}  generation {}  member {}{}  owns {} partitions  rebalances {}  last takeover {}",
        g.group,
        g.generation,
        g.member_id,
        if g.leader { " (leader)" } else { "" },
        g.owned_partitions,
        g.rebalances_total,
        g.last_takeover_seconds
            .map_or_else(|| "-".into(), human_duration),
    )
}
