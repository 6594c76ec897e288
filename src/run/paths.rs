//! Where a run's files live, and the naming rule for runs and shard names.
//!
//! ```text
//! <root>/data/<run>/<name>.csv                   shard data (header, then committed rows)
//! <root>/data/<run>/manifest_shard<I>_of_<N>.jsonl  shard manifest (header record, item records)
//! <root>/data/<run>/run.json                     run record (resolved config, version, fingerprint)
//! <root>/data/<run>/.locks/                      lock files (run, shard and name locks)
//! <root>/logs/<run>/shard_<I>_of_<N>.log         shard log
//! <cache.dir>/                                   item cache (default <root>/data/cache)
//! ```

use std::path::{Path, PathBuf};

use crate::error::Invalid;

/// Checks a run or shard name: 1-100 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 100 {
        return Err(format!(
            "{name:?} must be 1 to 100 characters long (it names files and directories)"
        )
        .into());
    }
    if name.starts_with('.') {
        return Err(format!("{name:?} must not start with '.'").into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(
            format!("{name:?} contains {c:?}; use only letters, digits, '.', '_' and '-'").into(),
        );
    }
    Ok(())
}

/// Names a shard's data file may not take: merge writes these in the same directory.
pub const RESERVED_NAMES: &[&str] = &["combined", "manifest_final", "stats", "run"];

/// The paths of one run under a root directory.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub data_dir: PathBuf,
    pub logs_dir: PathBuf,
}

impl RunPaths {
    /// Paths of `run` under `root`.
    pub fn new(root: &Path, run: &str) -> Self {
        RunPaths {
            data_dir: root.join("data").join(run),
            logs_dir: root.join("logs").join(run),
        }
    }

    /// The data file of a shard named `name`.
    pub fn data_file(&self, name: &str) -> PathBuf {
        self.data_dir.join(format!("{name}.csv"))
    }

    /// The manifest of shard `index` of `num_shards`.
    pub fn manifest(&self, index: u32, num_shards: u32) -> PathBuf {
        self.data_dir
            .join(format!("manifest_shard{index}_of_{num_shards}.jsonl"))
    }

    /// The log of shard `index` of `num_shards`.
    pub fn log(&self, index: u32, num_shards: u32) -> PathBuf {
        self.logs_dir
            .join(format!("shard_{index}_of_{num_shards}.log"))
    }

    /// The run record.
    pub fn run_record(&self) -> PathBuf {
        self.data_dir.join("run.json")
    }

    /// Directory of lock files.
    pub fn locks_dir(&self) -> PathBuf {
        self.data_dir.join(".locks")
    }

    /// Lists the manifests present in the run directory as (index, num_shards, path).
    pub fn manifests(&self) -> std::io::Result<Vec<(u32, u32, PathBuf)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.data_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if let Some((i, n)) = parse_manifest_name(&name.to_string_lossy()) {
                out.push((i, n, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Parses `manifest_shard<I>_of_<N>.jsonl`.
pub fn parse_manifest_name(name: &str) -> Option<(u32, u32)> {
    let rest = name
        .strip_prefix("manifest_shard")?
        .strip_suffix(".jsonl")?;
    let (i, n) = rest.split_once("_of_")?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract_rule() {
        for ok in ["process-0", "a", "A.b_c-9", &"x".repeat(100)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "../x",
            "a/b",
            "..",
            "sp ace",
            "é",
            &"x".repeat(101),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_names_round_trip() {
        let p = RunPaths::new(Path::new("/r"), "demo");
        let m = p.manifest(3, 8);
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(parse_manifest_name(&name), Some((3, 8)));
        assert_eq!(parse_manifest_name("manifest_shardx_of_8.jsonl"), None);
        assert_eq!(p.log(3, 8), Path::new("/r/logs/demo/shard_3_of_8.log"));
    }
}
