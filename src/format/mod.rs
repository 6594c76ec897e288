//! Text formats with no knowledge of runs: CSV writing, the quote-aware framing of generator
//! output, numbers for people, and stdout that tolerates a closed pipe.

pub(crate) mod csv_out;
pub(crate) mod csv_quotes;
pub mod human;
pub mod stdout;
