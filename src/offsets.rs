//! `kafka-tee offsets --group G`: where a consumer group stands in DC1 and in DC2, per
//! partition, for a person about to move the group to DC2.
//!
//! The translation comes from the offset maps kafka-tee keeps: in the checkpoint of
//! its state directory (`--state-dir`, or `state.dir` in `--config`) and with the
//! replication group's committed positions in DC1 (`--replication-group`, or
//! `replication.group`). They are as fresh as the last checkpoint or position commit
//! (a second by default); the proxy's own sync uses the map in memory.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::client::Client;
use crate::client::group::{Committed, by_topic};
use crate::tee::replicator::checkpoint::Checkpoint;
use crate::tee::replicator::offset_map::{OffsetMap, Translated};

#[derive(clap::Args, Debug)]
pub struct OffsetsArgs {
    /// The consumer group.
    #[arg(long)]
    pub group: String,
    /// A kafka-tee config file: its [source] and [target] (addresses, TLS, SASL),
    /// state.dir, replication.group and topic_prefix are used; flags override them.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// DC1 bootstrap addresses.
    #[arg(long, value_delimiter = ',', required_unless_present = "config")]
    pub source: Vec<String>,
    /// DC2 bootstrap addresses.
    #[arg(long, value_delimiter = ',', required_unless_present = "config")]
    pub target: Vec<String>,
    /// The proxy's state directory (its checkpoint holds the offset maps).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The proxies' replication group (its committed positions hold the offset maps).
    #[arg(long, value_name = "NAME")]
    pub replication_group: Option<String>,
    /// Prefix of the topic names in DC2.
    #[arg(long)]
    pub topic_prefix: Option<String>,
}

/// One partition of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub topic: String,
    pub partition: i32,
    pub dc1_committed: i64,
    pub translated: Option<Translated>,
    pub dc2_committed: Option<i64>,
    /// DC1 offsets not in DC2 as far as the map knows (None without a map).
    pub trails: Option<i64>,
}

impl Row {
    /// DC2's committed offset is the exact translation of DC1's.
    pub fn in_sync(&self) -> bool {
        matches!(self.translated, Some(Translated::Exact(o)) if self.dc2_committed == Some(o))
    }
}

pub async fn run(args: OffsetsArgs) -> anyhow::Result<ExitCode> {
    let (config, dc1, dc2) = crate::verify::clusters(
        args.config.as_deref(),
        &args.source,
        &args.target,
        "offsets",
    )?;
    let state_dir = args.state_dir.clone().or(config.state.dir.clone());
    let replication_group = args
        .replication_group
        .clone()
        .or(config.replication.group.clone());
    let prefix = args
        .topic_prefix
        .clone()
        .unwrap_or(config.replication.topic_prefix.clone());
    let dc1 = Client::connect(dc1).await?;
    let dc2 = Client::connect(dc2).await?;
    let rows = report(
        &dc1,
        &dc2,
        &args.group,
        state_dir,
        replication_group.as_deref(),
        &prefix,
    )
    .await;
    dc1.close();
    dc2.close();
    let rows = rows?;
    print!("{}", render(&args.group, &rows));
    if rows.iter().all(Row::in_sync) && !rows.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// The group's partitions in DC1 with their translation and DC2's committed offset.
pub async fn report(
    dc1: &Client,
    dc2: &Client,
    group: &str,
    state_dir: Option<PathBuf>,
    replication_group: Option<&str>,
    prefix: &str,
) -> anyhow::Result<Vec<Row>> {
    let meta = dc1.refresh_metadata(None).await?;
    let mut tps = Vec::new();
    for t in meta.topics.iter().filter(|t| !t.is_internal) {
        let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        if name.starts_with("__") {
            continue;
        }
        tps.extend(
            t.partitions
                .iter()
                .map(|p| (name.clone(), p.partition_index)),
        );
    }
    let ask = by_topic(tps);
    let c1 = dc1.find_group_coordinator(group).await?;
    let committed: Vec<Committed> = dc1.fetch_offsets(c1, group, &ask).await?;
    let mut maps = match state_dir {
        Some(dir) => checkpoint_maps(dir).await?,
        None => HashMap::new(),
    };
    if let Some(rg) = replication_group {
        let asked = by_topic(committed.iter().map(|c| (c.0.clone(), c.1)));
        let c = dc1.find_group_coordinator(rg).await?;
        for (t, p, _, meta) in dc1.fetch_offsets(c, rg, &asked).await? {
            if let Some(Ok(m)) = meta
                .filter(|m| !m.is_empty())
                .map(|m| OffsetMap::decode(&m))
            {
                maps.insert((t, p), m);
            }
        }
    }
    let dc2_ask = by_topic(committed.iter().map(|c| (format!("{prefix}{}", c.0), c.1)));
    let dc2_committed: HashMap<(String, i32), i64> = match dc2.find_group_coordinator(group).await {
        Ok(c2) => dc2
            .fetch_offsets(c2, group, &dc2_ask)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(t, p, o, _)| ((t, p), o))
            .collect(),
        Err(_) => HashMap::new(),
    };
    let mut rows = Vec::new();
    for (topic, partition, offset, _) in committed {
        let map = maps.get(&(topic.clone(), partition));
        let end = crate::tee::replicator::partition_end(dc1, &topic, partition).await?;
        rows.push(Row {
            translated: map.map(|m| m.translate(offset)),
            trails: map.map(|m| end - m.last_copied().map_or(0, |l| l + 1)),
            dc2_committed: dc2_committed
                .get(&(format!("{prefix}{topic}"), partition))
                .copied(),
            topic,
            partition,
            dc1_committed: offset,
        });
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(rows)
}

async fn checkpoint_maps(dir: PathBuf) -> anyhow::Result<HashMap<(String, i32), OffsetMap>> {
    let loaded = tokio::task::spawn_blocking(move || Checkpoint::load(&dir)).await??;
    let mut out = HashMap::new();
    for p in loaded.map(|c| c.partitions).unwrap_or_default() {
        if let Ok(m) = OffsetMap::decode(&p.offset_map) {
            out.insert((p.topic, p.partition), m);
        }
    }
    Ok(out)
}

/// The rows as a table, with a last line that says whether DC2 is in step.
pub fn render(group: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:>9} {:>13} {:>34} {:>13} {:>10}",
        "TOPIC", "PARTITION", "DC1-COMMITTED", "DC2-TRANSLATION", "DC2-COMMITTED", "DC2-TRAILS"
    );
    for r in rows {
        let translated = match r.translated {
            None => "- (no offset map)".to_string(),
            Some(Translated::Exact(o)) => o.to_string(),
            Some(Translated::NotYetCopied(o)) => format!("{o} (DC2's end: not copied yet)"),
            Some(Translated::Unknown) => "? (older than the offset map)".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>13} {:>34} {:>13} {:>10}",
            r.topic,
            r.partition,
            r.dc1_committed,
            translated,
            r.dc2_committed.map_or("-".into(), |o| o.to_string()),
            r.trails.map_or("-".into(), |o| o.to_string()),
        );
    }
    let differ = rows.iter().filter(|r| !r.in_sync()).count();
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "offsets: group {group} has no committed offsets in DC1"
        );
    } else if differ == 0 {
        let _ = writeln!(
            out,
            "offsets: group {group} is in sync: DC2 holds the exact translation of every committed offset"
        );
    } else {
        let _ = writeln!(
            out,
            "offsets: group {group} is NOT in sync in DC2 ({differ} of {} partitions differ)",
            rows.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(translated: Option<Translated>, dc2: Option<i64>) -> Row {
        Row {
            topic: "t".into(),
            partition: 0,
            dc1_committed: 600,
            translated,
            dc2_committed: dc2,
            trails: Some(0),
        }
    }

    #[test]
    fn in_sync_only_when_dc2_holds_the_exact_translation() {
        assert!(row(Some(Translated::Exact(100)), Some(100)).in_sync());
        assert!(!row(Some(Translated::Exact(100)), Some(99)).in_sync());
        assert!(!row(Some(Translated::NotYetCopied(100)), Some(100)).in_sync());
        assert!(!row(Some(Translated::Unknown), None).in_sync());
        assert!(!row(None, Some(600)).in_sync());
        let text = render("g", &[row(Some(Translated::Exact(100)), Some(100))]);
        assert!(text.contains("is in sync"), "{text}");
        let text = render("g", &[row(Some(Translated::Unknown), None)]);
        assert!(text.contains("older than the offset map") && text.contains("NOT in sync"));
    }
}
