//! Commands the tools suggest, built from what names the run (the `--config` the user gave, or
//! the one its launcher recorded, and `--root`), so that a hint pasted as printed acts on the same
//! run.

use std::path::{Path, PathBuf};

use crate::run::runs::RunRef;

/// The launcher command that finishes `run`: re-runs its failed or unfinished shards with the
/// launcher that last launched it (`--only-failed`), or launches it (workers resume) when no
/// launcher ever did. `config` is the `--config` the user gave, relative to the current directory.
pub fn finish_run(run: &RunRef, config: Option<&Path>) -> String {
    let launched = last_launch(&run.paths.logs_dir).is_some();
    launcher_command(run, config, launched.then_some("--only-failed"))
}

/// The launcher command that regenerates the items of `run` that an older revision of the
/// generator made (`--redo-stale`).
pub fn redo_stale(run: &RunRef, config: Option<&Path>) -> String {
    launcher_command(run, config, Some("--redo-stale"))
}

/// The launcher that last launched `run` (or `run_parallel.sh`), with its configuration and
/// `action`, run from the run's root.
fn launcher_command(run: &RunRef, config: Option<&Path>, action: Option<&str>) -> String {
    let launch = last_launch(&run.paths.logs_dir);
    let cwd = std::env::current_dir().unwrap_or_default();
    let elsewhere = !same_dir(&run.root, &cwd);
    // A launcher runs in the run's root: the command goes there first when that is not here,
    // and a configuration given relative to here becomes absolute.
    let config = match (config, &launch) {
        (Some(c), _) if elsewhere => Some(std::path::absolute(c).unwrap_or(c.to_path_buf())),
        (Some(c), _) => Some(c.to_path_buf()),
        (None, Some(l)) => l.config.clone(),
        (None, None) => None,
    };
    let script = match &launch {
        Some(Launch {
            script: Some(s), ..
        }) => shown_script(s, if elsewhere { &run.root } else { &cwd }),
        Some(l) if l.slurm => "./scripts/run_slurm.sh".into(),
        _ => "./scripts/run_parallel.sh".into(),
    };
    let mut words = vec![script];
    match config {
        Some(c) => words.extend(["--config".into(), quote(&c.to_string_lossy())]),
        None => words.push(format!("--config <the configuration of run {}>", run.name)),
    }
    words.extend(action.map(str::to_string));
    // A Slurm run submitted with its merge job gets one again, so that the dataset still
    // appears with nothing running on the login node.
    if action.is_some() && launch.as_ref().is_some_and(|l| l.slurm && l.merge) {
        words.push("--merge".into());
    }
    let cmd = words.join(" ");
    if elsewhere {
        format!("cd {} && {cmd}", quote(&run.root.to_string_lossy()))
    } else {
        cmd
    }
}

/// The last `launch` line of a run's launcher status files, local or Slurm.
struct Launch {
    config: Option<PathBuf>,
    script: Option<PathBuf>,
    slurm: bool,
    /// Submitted with a merge job (`run_slurm.sh --merge`).
    merge: bool,
}

fn last_launch(logs_dir: &Path) -> Option<Launch> {
    let mut best: Option<(String, Launch)> = None;
    for (file, slurm) in [("launcher.status", false), ("slurm.status", true)] {
        let Ok(text) = std::fs::read_to_string(logs_dir.join(file)) else {
            continue;
        };
        let Some((ts, _, fields)) = text
            .lines()
            .filter_map(crate::store::log::parse_line)
            .rfind(|(_, event, _)| *event == "launch")
        else {
            continue;
        };
        if best.as_ref().is_some_and(|(t, _)| t.as_str() >= ts) {
            continue;
        }
        let field = |key: &str| {
            fields
                .iter()
                .find(|(k, v)| *k == key && !v.is_empty())
                .map(|(_, v)| PathBuf::from(v))
        };
        let launch = Launch {
            config: field("config"),
            script: field("script"),
            slurm,
            merge: slurm && fields.iter().any(|(k, v)| *k == "merge" && v == "1"),
        };
        best = Some((ts.to_string(), launch));
    }
    best.map(|(_, l)| l)
}

/// A script path as typed from `dir`: relative (`./…`) when below it.
fn shown_script(script: &Path, dir: &Path) -> String {
    match script.strip_prefix(dir) {
        Ok(rel) => quote(&format!("./{}", rel.display())),
        Err(_) => quote(&script.to_string_lossy()),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A word as a POSIX shell needs it typed.
pub fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_a_shell_needs_it() {
        assert_eq!(quote("conf/my.yaml"), "conf/my.yaml");
        assert_eq!(quote("my conf.yaml"), "'my conf.yaml'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
