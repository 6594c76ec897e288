//! Finding a run: by `--config`, by `--run`, or the most recently active one under `logs/`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::run::config::Config;
use crate::run::paths::{validate_name, RunPaths};

/// A run located on disk.
#[derive(Debug, Clone)]
pub struct RunRef {
    pub root: PathBuf,
    pub name: String,
    pub paths: RunPaths,
    /// The configuration, when given with `--config`.
    pub config: Option<Config>,
    /// Set when the run was picked automatically (the caller says so on stderr).
    pub picked: bool,
}

/// Resolves `--config` / `--run` / neither under `--root` (default: the current directory).
pub fn find_run(config: Option<&Path>, run: Option<&str>, root: Option<&Path>) -> Result<RunRef> {
    let root = match root {
        Some(r) if r.is_dir() => r.to_path_buf(),
        Some(r) => {
            return Err(Error::usage(format!(
                "--root {}: not an existing directory",
                r.display()
            )))
        }
        None => std::env::current_dir()
            .map_err(|e| Error::usage(format!("cannot read the current directory: {e}")))?,
    };
    let (name, config, picked) = match (config, run) {
        (Some(_), Some(_)) => return Err(Error::usage("give --config or --run, not both")),
        (Some(c), None) => {
            let cfg = Config::load(c, &root)?;
            (cfg.run.clone(), Some(cfg), false)
        }
        (None, Some(r)) => {
            validate_name(r).map_err(|e| e.at("--run"))?;
            (r.to_string(), None, false)
        }
        (None, None) => (latest_run(&root)?, None, true),
    };
    let paths = RunPaths::new(&root, &name);
    if !paths.data_dir.is_dir() && !paths.logs_dir.is_dir() {
        return Err(Error::usage(format!(
            "unknown run {name:?}: neither {} nor {} exists",
            paths.data_dir.display(),
            paths.logs_dir.display()
        )));
    }
    Ok(RunRef {
        root,
        name,
        paths,
        config,
        picked,
    })
}

/// The run under `<root>/logs/` whose newest log was modified last.
fn latest_run(root: &Path) -> Result<String> {
    let logs = root.join("logs");
    let mut best: Option<(SystemTime, String)> = None;
    for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if validate_name(&name).is_err() || !entry.path().is_dir() {
            continue;
        }
        let newest = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max();
        if let Some(t) = newest {
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, name));
            }
        }
    }
    best.map(|(_, n)| n).ok_or_else(|| {
        Error::usage(format!(
            "no run found under {}; pass --config or --run",
            logs.display()
        ))
    })
}
