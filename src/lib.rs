//! shardrun: split a dataset-generation job into shards, run each shard as its own process,
//! commit crash-consistently, resume, and merge.
//!
//! The layers, from the bottom up (a module only imports from its own layer or below; see
//! docs/ARCHITECTURE.md):
//! - [`error`], [`mod@format`]: the typed error and text formats that know nothing of runs;
//! - [`run`]: the run description (config, items, plan, seeds, types, paths);
//! - [`store`]: durable state (files, lock, log, manifest, cache);
//! - [`child`]: spawning and supervising generator processes;
//! - `generator`: the builtins and the command and persistent generators;
//! - [`worker`], [`merge`], [`monitor`]: the three programs' engines, with [`hints`] for the
//!   commands they suggest.

pub mod child;
pub mod error;
pub mod format;
pub(crate) mod generator;
pub mod hints;
pub mod merge;
pub mod monitor;
pub mod run;
pub mod store;
pub mod worker;
