//! Durable state shared by the worker, merge and monitor: crash-safe file creation, the run
//! lock, the event log, the manifest (record codec and shard store) and the item cache.

pub(crate) mod cache;
pub(crate) mod files;
pub(crate) mod lock;
pub mod log;
pub(crate) mod manifest;
pub(crate) mod record;
