//! `shard-worker --check`: what a worker validates before it generates (configuration, items,
//! builtin parameters, the program and the files its command names, writable directories, free
//! locks), done up front by a launcher so that a mistake starts no shard and records nothing.
//! Writes nothing: no directory, lock file, log, manifest or run record.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ExitCode, Result};
use crate::run::config::GeneratorKind;
use crate::worker::shard::{Shard, WorkerArgs};

/// Runs the checks; without `--shard-index` but with `--num-shards N`, for every shard of the
/// plan (the configuration and items are read once).
pub fn run(args: &WorkerArgs) -> Result<ExitCode> {
    let all = args.shard_index.is_none() && args.num_shards.is_some();
    let mut one = args.clone();
    if all {
        one.shard_index = Some(0);
    }
    let shard = Shard::resolve(&one)?;
    check_named_files(&shard)?;
    let paths = &shard.paths;
    let mut dirs = vec![
        paths.data_dir.clone(),
        paths.logs_dir.clone(),
        paths.locks_dir(),
    ];
    if shard.use_cache {
        dirs.push(shard.config.cache.dir.clone());
    }
    for dir in &dirs {
        check_writable(dir)?;
    }
    let n = shard.num_shards;
    let shards: Vec<u32> = if all {
        (0..n).collect()
    } else {
        vec![shard.index]
    };
    for &i in &shards {
        let name = match (&args.name, all) {
            (Some(name), false) => name.clone(),
            _ => format!("process-{i}"),
        };
        if !args.force {
            // A changed identity (not a new revision) refuses the resume: say so now.
            crate::store::manifest::check_resumable(paths, &shard.manifest_header_of(i, &name))?;
        }
        let locks = paths.locks_dir();
        check_free(
            &locks.join(format!("shard{i}_of_{n}.lock")),
            &format!("shard {i} of {n} of run {:?}", shard.config.run),
        )?;
        check_free(
            &locks.join(format!("{name}.csv.lock")),
            &paths.data_file(&name).display().to_string(),
        )?;
    }
    crate::format::stdout::println(&format!(
        "check ok: run {}, {} of {n} shard(s), {} items",
        shard.config.run,
        shards.len(),
        shard.source.len()
    ));
    Ok(ExitCode::Ok)
}

/// Interpreters whose first argument that is not an option is the script they run.
const INTERPRETERS: &[&str] = &[
    "python", "python3", "bash", "sh", "Rscript", "node", "perl", "ruby", "julia", "lua",
];
/// Extensions of scripts: an argv element ending so names a file that must exist.
const SCRIPT_EXTENSIONS: &[&str] = &[
    "py", "sh", "bash", "R", "r", "jl", "pl", "rb", "js", "mjs", "lua", "awk",
];

/// A command's argv elements without placeholders that name a file (an explicit path such as
/// `./gen.py`, a script by its extension, or an interpreter's script) must name a readable file;
/// else every item would fail the same way.
fn check_named_files(shard: &Shard) -> Result<()> {
    let GeneratorKind::Command { argv } = &shard.config.generator.kind else {
        return Ok(());
    };
    let program = argv.first().map(|p| p.rsplit('/').next().unwrap_or(p));
    let interpreted = program.is_some_and(|p| {
        INTERPRETERS
            .iter()
            .any(|i| p == *i || p.strip_prefix(i).is_some_and(is_version))
    });
    let mut script_seen = false;
    for arg in argv.iter().skip(1) {
        // Code or a module follows these options, not a script file.
        if ["-c", "-e", "-m", "--eval", "-E"].contains(&arg.as_str()) {
            script_seen = true;
            continue;
        }
        if arg.contains('{') || arg.starts_with('-') || arg.contains('=') || arg.is_empty() {
            continue;
        }
        let explicit = ["/", "./", "../"].iter().any(|p| arg.starts_with(p));
        let by_extension = arg
            .rsplit_once('.')
            .is_some_and(|(stem, ext)| !stem.is_empty() && SCRIPT_EXTENSIONS.contains(&ext));
        let script = interpreted && !script_seen;
        script_seen = true;
        if !(explicit || by_extension || script) {
            continue;
        }
        let path = shard.config.root.join(arg);
        if let Err(e) = File::open(&path).and_then(|f| {
            if f.metadata()?.is_dir() {
                Err(std::io::Error::other("it is a directory"))
            } else {
                Ok(())
            }
        }) {
            return Err(Error::usage(format!(
                "{}: generator.command names {arg:?}, but {} cannot be read: {e}. Fix the path \
                 (relative paths start from the root, {})",
                shard.config.path.display(),
                path.display(),
                shard.config.root.display()
            )));
        }
    }
    Ok(())
}

/// `3`, `3.12`: what follows an interpreter's name in `python3.12`.
fn is_version(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// The directory, or the nearest existing directory above it (which the worker would create it
/// in), is writable by this process.
fn check_writable(dir: &Path) -> Result<()> {
    let mut at: PathBuf = std::path::absolute(dir).unwrap_or(dir.to_path_buf());
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p.to_path_buf(),
            None => break,
        }
    }
    let why = if !at.is_dir() {
        Some("it is not a directory".to_string())
    } else {
        let c = CString::new(at.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: access(2) only reads the NUL-terminated path.
        let ok = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
        (!ok).then(|| std::io::Error::last_os_error().to_string())
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::usage(format!(
            "cannot create or write {}: {} is not writable ({why}); check --root and the \
             directory's permissions",
            dir.display(),
            at.display()
        ))),
    }
}

/// No live process holds the lock file at `path` (a missing file is free). Only reads it.
fn check_free(path: &Path, what: &str) -> Result<()> {
    let Ok(file) = File::open(path) else {
        return Ok(());
    };
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            let who = std::fs::read_to_string(path).unwrap_or_default();
            let who = match who.trim() {
                "" => "another process",
                w => w,
            };
            Err(Error::Locked(format!(
                "{what} is locked by {who} ({}); wait for it to finish or stop it first",
                path.display()
            )))
        }
        Err(std::fs::TryLockError::Error(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_versions_are_recognised() {
        assert!(is_version("3") && is_version("3.12") && is_version(""));
        assert!(!is_version("-config"));
    }
}
