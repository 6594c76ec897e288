//! Generators: turn one item into CSV rows. Embedded ones (`vitals`, `echo`) run in-process; a
//! `command` generator runs the user's program per item.

pub(crate) mod command;
pub(crate) mod echo;
pub(crate) mod persistent;
pub(crate) mod vitals;

use std::sync::atomic::AtomicBool;

use serde_json::{Map, Value};

use crate::error::{Invalid, Reason};
use crate::format::csv_out::RowWriter;
use crate::run::items::Item;

/// An embedded generator. Implementations are deterministic functions of the item.
pub trait Builtin: Send + Sync {
    /// The CSV header.
    fn columns(&self) -> Vec<String>;
    /// The type of each column (see `types.rs`); the worker checks the rows against them.
    fn column_types(&self) -> Vec<crate::run::types::ColumnType>;
    /// Writes the item's rows (each with `columns().len()` fields) to `out`. A long item checks
    /// `stop` (raised by SIGINT/SIGTERM) now and then and gives up early with an error.
    fn generate(&self, item: &Item, out: &mut RowWriter, stop: &AtomicBool) -> Result<(), Reason>;
}

/// Names of the embedded generators.
pub const BUILTINS: &[&str] = &["vitals", "echo"];

/// Builds the embedded generator `name` from its params.
pub fn builtin(name: &str, params: &Map<String, Value>) -> Result<Box<dyn Builtin>, Invalid> {
    match name {
        "vitals" => Ok(Box::new(vitals::Vitals::new(params)?)),
        "echo" => Ok(Box::new(echo::Echo::new(params)?)),
        other => Err(format!(
            "generator.builtin: unknown generator {other:?} (available: {})",
            BUILTINS.join(", ")
        )
        .into()),
    }
}

/// Reads an integer param (`allow_zero` decides whether 0 is valid), with `default` when absent.
pub fn positive_int_param(
    params: &Map<String, Value>,
    name: &str,
    default: u64,
    allow_zero: bool,
) -> Result<u64, Invalid> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v.as_u64().filter(|&n| allow_zero || n > 0).ok_or_else(|| {
            Invalid(format!(
                "generator.params.{name}: must be a {} whole number (got {v})",
                if allow_zero {
                    "non-negative"
                } else {
                    "positive"
                }
            ))
        }),
    }
}
