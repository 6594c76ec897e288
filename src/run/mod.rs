//! The run description: the config file, the items it names, how they are split into shards
//! (the plan), the per-item seeds, column types, and where a run's files live.

pub mod config;
pub(crate) mod items;
pub mod paths;
pub(crate) mod plan;
pub(crate) mod rng;
pub mod runs;
pub mod seed;
pub(crate) mod types;
