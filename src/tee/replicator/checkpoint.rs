//! The replicator's durable state: per DC1 partition, the last DC1 offset known to be
//! in DC2, with the DC2 producer identity and next sequence that partition uses, so a
//! restart resumes with the same sequence numbers (DC2 then drops re-sent duplicates).
//!
//! Written as TOML to a temporary file, synced, then renamed over the previous one, so
//! a crash leaves either the old or the new checkpoint, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name inside `state.dir`.
pub const FILE_NAME: &str = "replicator-checkpoint.toml";
const FORMAT_VERSION: u32 = 1;

/// The whole checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    /// The DC2 producer identity most recently obtained.
    pub producer_id: i64,
    pub producer_epoch: i16,
    #[serde(default)]
    pub partitions: Vec<PartitionCheckpoint>,
}

/// One DC1 partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionCheckpoint {
    pub topic: String,
    pub partition: i32,
    /// Last DC1 offset known to be in DC2.
    pub offset: i64,
    /// The DC2 producer identity this partition's sequence belongs to.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence of the next batch sent to DC2.
    pub next_sequence: i32,
    /// Where this partition's DC1 offsets went in DC2 (`OffsetMap::encode`), for
    /// consumer offset translation; absent in checkpoints of older versions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub offset_map: String,
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is not valid (fix or remove it): {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Checkpoint {
    pub fn new(
        producer_id: i64,
        producer_epoch: i16,
        mut partitions: Vec<PartitionCheckpoint>,
    ) -> Self {
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Self {
            version: FORMAT_VERSION,
            producer_id,
            producer_epoch,
            partitions,
        }
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Reads the checkpoint in `dir`; `Ok(None)` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Self>, CheckpointError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        let cp: Checkpoint = toml::from_str(&text).map_err(|e| CheckpointError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if cp.version != FORMAT_VERSION {
            return Err(CheckpointError::Parse {
                path,
                message: format!("unknown format version {}", cp.version),
            });
        }
        Ok(Some(cp))
    }

    /// Writes atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn store(&self, dir: &Path) -> Result<(), CheckpointError> {
        let path = Self::path(dir);
        let werr = |source| CheckpointError::Write {
            path: path.clone(),
            source,
        };
        let text = toml::to_string(self)
            .map_err(|e| werr(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        std::fs::create_dir_all(dir).map_err(werr)?;
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp).map_err(werr)?;
            f.write_all(text.as_bytes()).map_err(werr)?;
            f.sync_all().map_err(werr)?;
        }
        std::fs::rename(&tmp, &path).map_err(werr)?;
        // Makes the rename itself durable; not every platform allows opening a directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kafka-tee-cp-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn round_trip() {
        let dir = tempdir("rt");
        assert_eq!(Checkpoint::load(&dir).expect("load"), None);
        let cp = Checkpoint::new(
            42,
            3,
            vec![
                PartitionCheckpoint {
                    topic: "b-topic".into(),
                    partition: 1,
                    offset: 99,
                    producer_id: 42,
                    producer_epoch: 3,
                    next_sequence: 1000,
                    offset_map: "om1:0.99.5".into(),
                },
                PartitionCheckpoint {
                    topic: "a.topic-with-dashes".into(),
                    partition: 0,
                    offset: -1,
                    producer_id: 41,
                    producer_epoch: 0,
                    next_sequence: 0,
                    offset_map: String::new(),
                },
            ],
        );
        cp.store(&dir).expect("store");
        let back = Checkpoint::load(&dir).expect("load").expect("present");
        assert_eq!(back, cp);
        assert_eq!(back.partitions[0].topic, "a.topic-with-dashes");
        // Overwriting leaves no temporary file behind.
        cp.store(&dir).expect("store again");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path() {
        let dir = tempdir("bad");
        std::fs::write(Checkpoint::path(&dir), "version = \"x\"").expect("write");
        let err = Checkpoint::load(&dir).expect_err("corrupt");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
