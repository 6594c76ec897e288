//! Integration tests: the real binaries on real files and processes, each in its own temp dir.

mod battery;
mod checksums;
mod common;
mod formats;
mod launcher;
mod launcher_report;
mod limits;
mod log_full;
mod max_running;
mod merge;
mod monitor;
mod notify;
mod partition;
mod persistent;
mod revisions;
mod run_lock;
mod scale;
mod serve;
mod slurm;
mod stop_continue;
mod worker_bad_input;
mod worker_crash;
mod worker_run;
