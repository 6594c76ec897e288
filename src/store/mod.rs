//! Durable state shared by the worker, merge and monitor: crash-safe file creation, the run
//! lock, the event log, the manifest (record codec and shard store) and the item cache.

pub mod cache;
pub mod files;
pub mod lock;
pub mod log;
pub mod manifest;
pub mod record;
