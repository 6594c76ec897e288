//! `echo`: a trivial, fast generator for tests and benchmarks. Columns `key,index,seed,row,pad`;
//! params `rows` (rows per item, default 1) and `pad` (length of the `pad` column, default 0).

use std::sync::atomic::AtomicBool;

use serde_json::{Map, Value};

use super::{positive_int_param, Builtin};
use crate::error::{Invalid, Reason};
use crate::format::csv_out::RowWriter;
use crate::run::items::Item;
use crate::run::types::ColumnType;

/// The echo generator.
#[derive(Debug)]
pub struct Echo {
    rows: u64,
    pad: String,
}

impl Echo {
    /// Builds it from its params.
    pub fn new(params: &Map<String, Value>) -> Result<Self, Invalid> {
        for k in params.keys() {
            if k != "rows" && k != "pad" {
                return Err(format!(
                    "generator.params.{k}: unknown parameter of echo (known: rows, pad)"
                )
                .into());
            }
        }
        let rows = positive_int_param(params, "rows", 1, true)?;
        let pad = positive_int_param(params, "pad", 0, true)?;
        if rows > 1_000_000 || pad > 1 << 24 {
            return Err(
                "generator.params: echo allows at most 1,000,000 rows and a pad of 16 MiB".into(),
            );
        }
        Ok(Echo {
            rows,
            pad: "x".repeat(pad as usize),
        })
    }
}

impl Builtin for Echo {
    fn columns(&self) -> Vec<String> {
        ["key", "index", "seed", "row", "pad"]
            .map(String::from)
            .to_vec()
    }

    fn column_types(&self) -> Vec<ColumnType> {
        // Seeds fit 53 bits (see seed.rs): int64 holds them.
        use ColumnType::{Int64, String};
        vec![String, Int64, Int64, Int64, String]
    }

    fn generate(&self, item: &Item, out: &mut RowWriter, _stop: &AtomicBool) -> Result<(), Reason> {
        for row in 0..self.rows {
            out.field(item.key.as_bytes());
            out.field_u64(item.index);
            out.field_u64(item.seed);
            out.field_u64(row);
            out.field(self.pad.as_bytes());
            out.end_record();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_as_the_declared_types() {
        let params = serde_json::from_str(r#"{"rows": 3, "pad": 2}"#).unwrap();
        let e = Echo::new(&params).unwrap();
        let item = Item {
            index: 7,
            key: "a,\"b\"".into(),
            seed: (1 << 53) - 1,
            fields: Vec::new(),
        };
        let mut out = RowWriter::new();
        e.generate(&item, &mut out, &AtomicBool::new(false))
            .unwrap();
        let rows = String::from_utf8(out.take().0).unwrap();
        crate::run::types::check_rows(&e.columns(), &e.column_types(), rows.as_bytes(), true)
            .unwrap();
    }
}
