//! shardrun: split a dataset-generation job into shards, run each shard as its own process,
//! commit crash-consistently, resume, and merge.

pub mod cache;
pub mod config;
pub mod copy;
pub mod csv_out;
pub mod csv_quotes;
pub mod error;
pub mod files;
pub mod generator;
pub mod groups;
pub mod guard;
pub mod hints;
pub mod human;
pub mod items;
pub mod lock;
pub mod log;
pub mod manifest;
pub mod merge;
pub mod monitor;
pub mod paths;
pub mod persistent;
pub mod plan;
pub mod preflight;
pub mod proc_info;
pub mod process;
pub mod rng;
pub mod runs;
pub mod seed;
pub mod shard;
pub mod signals;
pub mod spawn;
pub mod stderr_cap;
pub mod stdout;
pub mod types;
pub mod worker;
