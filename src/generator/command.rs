//! `command` generators: the user's program, run once per item attempt without a shell. The item
//! reaches it as argv placeholders, environment variables and one JSON object on stdin; its stdout
//! is parsed as CSV and re-written through the project's writer, its stderr goes to the log.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::child::signals::signal_name;
use crate::child::spawn::Environ;
use crate::child::supervise::{run_attempt, AttemptSpec, Ended, Launch};
use crate::error::Invalid;
use crate::format::csv_out::RowWriter;
use crate::run::items::Item;

/// How long a generator's leftovers may hold its stdout after it exits.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// One piece of an argv element.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Key,
    Index,
    Seed,
    Shard,
    Slot,
    Field(String),
}

/// A parsed argv element.
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(s: &str, fields: &[String], at: usize) -> Result<Template, Invalid> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!(
                            "generator.command[{at}]: {s:?} opens a placeholder with {{ that is \
                             never closed (write {{{{ for a literal brace)"
                        )
                        .into());
                    }
                    // `{key}` is always the item's key: a csv source's key column may well be
                    // named `key` (and then holds the same value).
                    const BUILTIN: [&str; 4] = ["index", "seed", "shard", "slot"];
                    if BUILTIN.contains(&name.as_str()) && fields.contains(&name) {
                        return Err(format!(
                            "generator.command[{at}]: {{{name}}} in {s:?} is ambiguous: the items \
                             have a field named {name:?}, and {{{name}}} is also the item's own \
                             {name}. Rename the field (its value is also in the JSON on stdin, \
                             under \"fields\")"
                        )
                        .into());
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(match name.as_str() {
                        "key" => Piece::Key,
                        "index" => Piece::Index,
                        "seed" => Piece::Seed,
                        "shard" => Piece::Shard,
                        "slot" => Piece::Slot,
                        f if fields.iter().any(|x| x == f) => Piece::Field(f.to_string()),
                        other => {
                            let mut known = vec!["key", "index", "seed", "shard", "slot"];
                            known.extend(fields.iter().map(String::as_str));
                            return Err(format!(
                                "generator.command[{at}]: unknown placeholder {{{other}}} in {s:?} \
                                 (known: {}; write {{{{ and }}}} for literal braces)",
                                known.join(", ")
                            )
                            .into());
                        }
                    });
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template(pieces))
    }

    fn is_literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Piece::Lit(s)] => Some(s),
            _ => None,
        }
    }

    fn render(&self, item: &Item, shard: u32, slot: u32) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Key => out.push_str(&item.key),
                Piece::Index => out.push_str(&item.index.to_string()),
                Piece::Seed => out.push_str(&item.seed.to_string()),
                Piece::Shard => out.push_str(&shard.to_string()),
                Piece::Slot => out.push_str(&slot.to_string()),
                Piece::Field(f) => {
                    if let Some((_, v)) = item.fields.iter().find(|(k, _)| k == f) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }
}

/// A configured command generator.
#[derive(Debug)]
pub struct CommandGen {
    /// `argv[0]` resolved once, to an absolute path, so that attempts do not search `PATH`.
    program: PathBuf,
    /// The worker's environment, captured once for all attempts (the worker does not change
    /// its environment while it runs).
    environ: Environ,
    argv: Vec<Template>,
    columns: Vec<String>,
    cwd: PathBuf,
    timeout: Option<Duration>,
    shard: u32,
    num_shards: u32,
    /// `Some(marker)` in persistent mode.
    marker: Option<Vec<u8>>,
    /// The most stdout one item may write.
    max_item_bytes: u64,
}

/// What a command generator is built from.
pub struct CommandSpec<'a> {
    /// The argv template.
    pub argv: &'a [String],
    pub columns: Vec<String>,
    /// Field names available as placeholders.
    pub fields: &'a [String],
    /// The root directory: relative paths and the working directory.
    pub root: &'a Path,
    pub timeout: Option<Duration>,
    pub shard: u32,
    pub num_shards: u32,
    /// `Some(end-of-item marker)` for a persistent generator.
    pub marker: Option<Vec<u8>>,
    /// The most stdout one item may write (`generator.max_item_bytes`).
    pub max_item_bytes: u64,
}

/// The kept parser, reset, or a new one.
fn reused_reader(kept: &mut Option<csv_core::Reader>) -> csv_core::Reader {
    match kept.take() {
        Some(mut r) => {
            r.reset();
            r
        }
        None => csv_core::Reader::new(),
    }
}

/// Consecutive start-up failures of a persistent generator after which the shard stops.
pub const MAX_START_FAILURES: u32 = 3;

/// What one slot keeps between items: its persistent generator process, if any.
#[derive(Default)]
pub struct Slot {
    server: Option<crate::generator::persistent::Server>,
    start_failures: u32,
    /// The CSV parser, kept across items: building one costs more than a whole protocol
    /// round trip, resetting it nothing.
    reader: Option<csv_core::Reader>,
}

impl Slot {
    /// A parser for the next item's output (reused; give it back with [`Slot::give_back`]).
    fn parser<'c>(&mut self, columns: &'c [String]) -> StdoutRows<'c> {
        StdoutRows::with_reader(columns, reused_reader(&mut self.reader))
    }

    fn give_back(&mut self, parser: StdoutRows<'_>) {
        self.reader = Some(parser.reader);
    }

    /// Ends the slot's persistent process: stdin closed, a short grace, then its group killed.
    pub fn finish(&mut self, on_stderr: &mut dyn FnMut(&[u8])) {
        if let Some(mut s) = self.server.take() {
            s.shutdown(Duration::from_secs(1), on_stderr);
        }
    }
}

/// Why an attempt did not produce rows.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptError {
    /// The attempt failed; the reason goes to the manifest and the log.
    Failed(String),
    /// A signal asked the worker to stop; the item stays pending.
    Stopped,
    /// A persistent generator failed to start too many times in a row: the shard must stop.
    Fatal(String),
}

impl CommandGen {
    /// Parses the argv template (placeholders checked against `fields`) and checks that the
    /// program can be found, before any item runs.
    pub fn new(spec: CommandSpec<'_>) -> Result<Self, Invalid> {
        let CommandSpec {
            argv,
            columns,
            fields,
            root,
            timeout,
            shard,
            num_shards,
            marker,
            max_item_bytes,
        } = spec;
        let argv = argv
            .iter()
            .enumerate()
            .map(|(i, a)| Template::parse(a, fields, i))
            .collect::<Result<Vec<_>, _>>()?;
        if marker.is_some() {
            let per_item = argv
                .iter()
                .flat_map(|t| &t.0)
                .find(|p| !matches!(p, Piece::Lit(_) | Piece::Shard | Piece::Slot));
            if per_item.is_some() {
                return Err("generator.command: a persistent generator is started once per slot, so only \
                     {shard} and {slot} are available in its argv (items arrive as JSON lines on stdin)"
                    .into());
            }
        }
        // Attempts add no `PATH` to the environment, so the worker's `PATH`, which
        // `resolve_program` searches, is the one they would search too.
        let program = match argv.first().and_then(Template::is_literal) {
            Some(program) => crate::child::supervise::resolve_program(program, root)
                .map_err(|e| e.within("generator.command[0]"))?,
            None => {
                return Err(
                    "generator.command[0]: the program must not contain placeholders".into(),
                )
            }
        };
        // Absolute, so the child's chdir to the root cannot change which file is executed.
        let program = std::path::absolute(&program).map_err(|e| {
            Invalid(format!(
                "generator.command[0]: cannot make {} absolute: {e}",
                program.display()
            ))
        })?;
        Ok(CommandGen {
            program,
            environ: Environ::capture(),
            argv,
            columns,
            cwd: root.to_path_buf(),
            timeout,
            shard,
            num_shards,
            marker,
            max_item_bytes,
        })
    }

    /// True for a persistent generator.
    pub fn is_persistent(&self) -> bool {
        self.marker.is_some()
    }

    /// Serves one attempt for `item` through the slot's persistent process (started on demand).
    pub fn serve(
        &self,
        item: &Item,
        slot_no: u32,
        slot: &mut Slot,
        stop: &AtomicBool,
        on_stderr: &mut dyn FnMut(&[u8]),
        out: &mut RowWriter,
    ) -> Result<(), AttemptError> {
        use crate::generator::persistent::{ServeError, Server, ServerSpec};
        let server = slot.server.get_or_insert_with(|| {
            let argv = self
                .argv
                .iter()
                .map(|t| t.render(item, self.shard, slot_no))
                .collect();
            let marker = self.marker.clone().unwrap_or_default();
            Server::new(ServerSpec {
                program: self.program.clone(),
                argv,
                env: vec![
                    ("SHARDRUN_SHARD_INDEX".to_string(), self.shard.to_string()),
                    (
                        "SHARDRUN_NUM_SHARDS".to_string(),
                        self.num_shards.to_string(),
                    ),
                    ("SHARDRUN_SLOT".to_string(), slot_no.to_string()),
                    (
                        "SHARDRUN_MARKER".to_string(),
                        String::from_utf8_lossy(&marker).into_owned(),
                    ),
                ],
                environ: self.environ.clone(),
                cwd: self.cwd.clone(),
                marker,
            })
        });
        let mut parser = StdoutRows::with_reader(&self.columns, reused_reader(&mut slot.reader))
            .with_limit(self.max_item_bytes);
        let result = server.serve(
            &item_json(item),
            self.timeout,
            stop,
            &mut |chunk| parser.feed(chunk, out),
            on_stderr,
        );
        let failed = |why: String| Err(AttemptError::Failed(why));
        if result.is_ok() {
            parser.finish(out);
        }
        let error = parser.error.take();
        // A quote left open hides the marker line (it could be a value's line): say so when
        // the item then times out or the generator ends, or the reason would mislead.
        let open_quote = if parser.in_quoted_field() {
            "; the output was inside a quoted field (a \" opened a field and was not closed, so \
             the end-of-item marker line was read as part of a value)"
        } else {
            ""
        };
        slot.give_back(parser);
        match result {
            Ok(()) => {
                slot.start_failures = 0;
                match error {
                    Some(e) => failed(e),
                    None => Ok(()),
                }
            }
            Err(ServeError::StartFailed(why)) => {
                slot.start_failures += 1;
                let why = format!("the generator did not start: {why}");
                if slot.start_failures >= MAX_START_FAILURES {
                    return Err(AttemptError::Fatal(format!(
                        "{why} ({} times in a row; stopping the shard)",
                        slot.start_failures
                    )));
                }
                failed(why)
            }
            Err(ServeError::Stopped) => Err(AttemptError::Stopped),
            Err(ServeError::TimedOut) => failed(format!(
                "timed out after {} (generator restarted){open_quote}",
                fmt_duration(self.timeout.unwrap_or_default())
            )),
            Err(ServeError::Crashed(why)) => failed(format!(
                "the generator ended before the end-of-item marker: {why}{open_quote}"
            )),
            Err(ServeError::Protocol(why)) => failed(format!("protocol error: {why}")),
            Err(ServeError::Aborted) => failed(error.unwrap_or_else(|| "bad output".into())),
            Err(ServeError::Io(why)) => failed(format!("cannot talk to the generator: {why}")),
        }
    }

    /// The output columns.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Files the command names, as (argv element, path) (argv elements without placeholders that are existing files,
    /// relative to the root): their contents are part of the generator's identity.
    pub fn named_files(&self) -> Vec<(String, PathBuf)> {
        self.argv
            .iter()
            .filter_map(Template::is_literal)
            .map(|a| (a.to_string(), self.cwd.join(a)))
            .filter(|(_, p)| p.is_file())
            .collect()
    }

    /// Runs one attempt for `item` in `slot`, writing validated rows to `out`. `on_stderr` gets
    /// each stderr line.
    pub fn attempt(
        &self,
        item: &Item,
        slot: u32,
        state: &mut Slot,
        stop: &AtomicBool,
        on_stderr: &mut dyn FnMut(&[u8]),
        out: &mut RowWriter,
    ) -> Result<(), AttemptError> {
        let argv: Vec<String> = self
            .argv
            .iter()
            .map(|t| t.render(item, self.shard, slot))
            .collect();
        let env = vec![
            ("SHARDRUN_ITEM_KEY".to_string(), item.key.clone()),
            ("SHARDRUN_ITEM_INDEX".to_string(), item.index.to_string()),
            ("SHARDRUN_ITEM_SEED".to_string(), item.seed.to_string()),
            ("SHARDRUN_SHARD_INDEX".to_string(), self.shard.to_string()),
            (
                "SHARDRUN_NUM_SHARDS".to_string(),
                self.num_shards.to_string(),
            ),
            ("SHARDRUN_SLOT".to_string(), slot.to_string()),
        ];
        let stdin = item_json(item);
        let spec = AttemptSpec {
            launch: Launch {
                program: &self.program,
                argv: &argv,
                env: &env,
                environ: &self.environ,
                cwd: &self.cwd,
            },
            stdin: &stdin,
            timeout: self.timeout,
            exit_grace: EXIT_GRACE,
        };
        let mut parser = state.parser(&self.columns).with_limit(self.max_item_bytes);
        let ended = run_attempt(&spec, stop, &mut |chunk| parser.feed(chunk, out), on_stderr);
        if matches!(ended, Ok(Ended::Exited(0))) {
            parser.finish(out);
        }
        let error = parser.error.take();
        state.give_back(parser);
        let ended =
            ended.map_err(|e| AttemptError::Failed(format!("cannot start {:?}: {e}", argv[0])))?;
        match ended {
            Ended::Exited(0) => match error {
                Some(e) => Err(AttemptError::Failed(e)),
                None => Ok(()),
            },
            Ended::Exited(code) => Err(AttemptError::Failed(format!("exit code {code}"))),
            Ended::Signaled(sig) if stopped_with_the_worker(sig, stop) => {
                Err(AttemptError::Stopped)
            }
            Ended::Signaled(sig) => Err(AttemptError::Failed(format!(
                "killed by signal {sig} ({})",
                signal_name(sig)
            ))),
            Ended::TimedOut => Err(AttemptError::Failed(format!(
                "timed out after {}",
                fmt_duration(self.timeout.unwrap_or_default())
            ))),
            Ended::Stopped => Err(AttemptError::Stopped),
            Ended::Aborted => Err(AttemptError::Failed(
                error.unwrap_or_else(|| "bad output".into()),
            )),
        }
    }
}

/// A scheduler stopping a job (Slurm's scancel, a time limit, preemption) signals every process
/// of it at once: the generator may die of that SIGTERM before the worker has seen its own. Such
/// a death is the worker being stopped, not the item failing, when the worker's stop request
/// follows within a moment (the item then stays pending and is redone on resume).
fn stopped_with_the_worker(sig: i32, stop: &AtomicBool) -> bool {
    use std::sync::atomic::Ordering;
    if !matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
        return false;
    }
    let until = std::time::Instant::now() + Duration::from_millis(500);
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The JSON object a command reads on stdin.
pub fn item_json(item: &Item) -> Vec<u8> {
    let fields: serde_json::Map<String, serde_json::Value> = item
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut v = serde_json::to_vec(&serde_json::json!({
        "index": item.index,
        "key": item.key,
        "seed": item.seed,
        "fields": fields,
    }))
    .unwrap_or_default();
    v.push(b'\n');
    v
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Incremental CSV parsing of a command's stdout into validated records.
pub struct StdoutRows<'c> {
    columns: &'c [String],
    reader: csv_core::Reader,
    field_buf: Vec<u8>,
    ends: Vec<usize>,
    out_len: usize,
    ends_len: usize,
    records: u64,
    /// Whether the output so far ends inside a quoted field.
    quotes: crate::format::csv_quotes::Quotes,
    /// Bytes of output taken so far, and the most allowed.
    taken: u64,
    limit: u64,
    /// The first problem found (wrong field count), which fails the attempt.
    pub error: Option<String>,
}

impl<'c> StdoutRows<'c> {
    /// A parser expecting records of `columns.len()` fields.
    #[cfg(test)]
    pub fn new(columns: &'c [String]) -> Self {
        Self::with_reader(columns, csv_core::Reader::new())
    }

    /// A parser using `reader` (freshly reset).
    fn with_reader(columns: &'c [String], reader: csv_core::Reader) -> Self {
        StdoutRows {
            columns,
            reader,
            field_buf: vec![0; 4096],
            ends: vec![0; columns.len().max(1) + 1],
            out_len: 0,
            ends_len: 0,
            records: 0,
            quotes: crate::format::csv_quotes::Quotes::default(),
            taken: 0,
            limit: u64::MAX,
            error: None,
        }
    }

    /// Fails the output once it passes `limit` bytes.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Consumes a chunk of stdout; returns false once the output is known to be bad.
    pub fn feed(&mut self, mut input: &[u8], out: &mut RowWriter) -> bool {
        self.taken += input.len() as u64;
        if self.taken > self.limit {
            self.error.get_or_insert_with(|| {
                format!(
                    "bad output: more than generator.max_item_bytes ({} bytes) for one item",
                    self.limit
                )
            });
            return false;
        }
        self.quotes.consume(input);
        loop {
            let (res, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.field_buf[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            input = &input[nin..];
            self.out_len += nout;
            self.ends_len += nend;
            match res {
                csv_core::ReadRecordResult::InputEmpty => return self.error.is_none(),
                csv_core::ReadRecordResult::OutputFull => {
                    let n = self.field_buf.len() * 2;
                    self.field_buf.resize(n, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    // The ends hold one more field than a record may have: this record has too
                    // many, known before it is read whole (a line of commas costs nothing).
                    self.error = Some(format!(
                        "bad output: record {} has more than {} fields, expected {} ({})",
                        self.records + 1,
                        self.columns.len(),
                        self.columns.len(),
                        self.columns.join(",")
                    ));
                    return false;
                }
                csv_core::ReadRecordResult::Record => {
                    self.record(out);
                    if self.error.is_some() {
                        return false;
                    }
                }
                csv_core::ReadRecordResult::End => return self.error.is_none(),
            }
        }
    }

    /// True when the output so far ends inside a quoted field.
    pub fn in_quoted_field(&self) -> bool {
        self.quotes.in_quoted_field()
    }

    /// Signals the end of stdout (flushes a last record without a newline). Output that ends
    /// inside a quoted field is invalid CSV, not a value that happens to end there: it fails.
    pub fn finish(&mut self, out: &mut RowWriter) {
        if self.error.is_none() && self.quotes.text_after_quote() {
            self.error = Some(
                "bad output: a field has text after its closing quote (as in \"a\"b); quote the \
                 whole field (\"ab\") or none of it"
                    .into(),
            );
        }
        if self.error.is_none() && self.quotes.in_quoted_field() {
            self.error = Some(format!(
                "bad output: it ends inside a quoted field (record {}: a \" opened a field and was \
                 never closed)",
                self.records + 1
            ));
        }
        if self.error.is_none() {
            self.feed(&[], out);
        }
    }

    fn record(&mut self, out: &mut RowWriter) {
        let n = self.ends_len;
        let ends = &self.ends[..n];
        let field = |i: usize| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &self.field_buf[start..ends[i]]
        };
        self.records += 1;
        let is_header = self.records == 1
            && n == self.columns.len()
            && (0..n).all(|i| field(i) == self.columns[i].as_bytes());
        // A first record that is a header, but not this one, would be committed as a row of
        // every item: refuse it instead. Told apart from data only where data is unlikely to
        // look so: the column names in another order, or (3 columns or more) all but one name
        // in place with every field a plain identifier (a column renamed in the configuration
        // and not in the script).
        let is_name = |f: &[u8]| self.columns.iter().any(|c| c.as_bytes() == f);
        let identifier = |f: &[u8]| {
            f.first()
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
                && f.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        };
        let in_place = (0..n.min(self.columns.len()))
            .filter(|&i| field(i) == self.columns[i].as_bytes())
            .count();
        let other_header = self.records == 1
            && !is_header
            && n == self.columns.len()
            && n >= 2
            && ((0..n).all(|i| is_name(field(i)))
                || (n >= 3 && in_place + 1 >= n && (0..n).all(|i| identifier(field(i)))));
        if other_header {
            let shown: Vec<String> = (0..n)
                .map(|i| String::from_utf8_lossy(field(i)).into_owned())
                .collect();
            self.error = Some(format!(
                "bad output: the first record ({}) looks like a CSV header but is not \
                 output.columns ({}); a header line must equal output.columns exactly, in order \
                 (or leave it out)",
                shown.join(","),
                self.columns.join(",")
            ));
        } else if !is_header {
            if n != self.columns.len() {
                self.error = Some(format!(
                    "bad output: record {} has {n} field{}, expected {} ({})",
                    self.records,
                    if n == 1 { "" } else { "s" },
                    self.columns.len(),
                    self.columns.join(",")
                ));
            } else {
                for i in 0..n {
                    out.field(field(i));
                }
                out.end_record();
            }
        }
        self.out_len = 0;
        self.ends_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    fn parse_in_chunks(text: &[u8], columns: &[String], chunk: usize) -> (String, Option<String>) {
        let mut out = RowWriter::new();
        let mut p = StdoutRows::new(columns);
        for c in text.chunks(chunk) {
            if !p.feed(c, &mut out) {
                break;
            }
        }
        p.finish(&mut out);
        (
            String::from_utf8_lossy(out.as_bytes()).into_owned(),
            p.error,
        )
    }

    #[test]
    fn rows_are_rewritten_identically_whatever_the_chunking() {
        let c = cols(&["a", "b"]);
        let text = b"a,b\n1,\"x, y\"\r\n'q',\"say \"\"hi\"\"\"\n\"multi\nline\",\n\nlast,row";
        let want = "1,\"x, y\"\n'q',\"say \"\"hi\"\"\"\n\"multi\nline\",\nlast,row\n";
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (got, err) = parse_in_chunks(text, &c, chunk);
            assert_eq!(err, None);
            assert_eq!(got, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_reused_parser_forgets_the_previous_items_unfinished_output() {
        let c = cols(&["a", "b"]);
        let mut slot = Slot::default();
        let mut out = RowWriter::new();
        let mut p = slot.parser(&c);
        p.feed(b"x,\"unterminated", &mut out);
        slot.give_back(p);
        let mut out = RowWriter::new();
        let mut p = slot.parser(&c);
        p.feed(b"1,2\n", &mut out);
        p.finish(&mut out);
        assert_eq!(p.error, None);
        assert_eq!(out.as_bytes(), b"1,2\n");
    }

    #[test]
    fn an_unclosed_or_ambiguous_placeholder_is_refused() {
        let fields = cols(&["date", "index"]);
        let e = Template::parse("x{date", &fields, 1).err().unwrap().0;
        assert!(e.contains("never closed"), "{e}");
        let e = Template::parse("{index}", &fields, 1).err().unwrap().0;
        assert!(e.contains("ambiguous"), "{e}");
        assert!(Template::parse("{{date}} {date}", &fields, 1).is_ok());
        assert!(Template::parse("{index}", &cols(&["date"]), 1).is_ok());
        assert!(Template::parse("{key}", &cols(&["key", "v"]), 1).is_ok());
    }

    #[test]
    fn output_ending_inside_a_quoted_field_fails() {
        let c = cols(&["k", "v"]);
        for chunk in [1, 3, 64] {
            let (_, err) = parse_in_chunks(b"k,\"abc", &c, chunk);
            assert!(err.unwrap().contains("ends inside a quoted field"));
            let (_, err) = parse_in_chunks(b"a,1\nk,\"ab\"\"\n", &c, chunk);
            assert!(err.unwrap().contains("record 2"));
            let (got, err) = parse_in_chunks(b"k,\"ab\"\"\"", &c, chunk);
            assert_eq!((got.as_str(), err), ("k,\"ab\"\"\"\n", None));
        }
    }

    #[test]
    fn a_flood_of_fields_fails_before_the_record_ends_and_in_bounded_memory() {
        let c = cols(&["k", "v"]);
        let mut out = RowWriter::new();
        let mut p = StdoutRows::new(&c);
        let commas = vec![b','; 10 << 20];
        assert!(!p.feed(&commas, &mut out));
        assert!(p.ends.len() <= 3, "{} field ends", p.ends.len());
        assert_eq!(
            p.error.as_deref(),
            Some("bad output: record 1 has more than 2 fields, expected 2 (k,v)")
        );
    }

    #[test]
    fn output_past_the_item_limit_fails() {
        let c = cols(&["k"]);
        let mut out = RowWriter::new();
        let mut p = StdoutRows::new(&c).with_limit(10);
        assert!(p.feed(b"12345\n", &mut out));
        assert!(!p.feed(b"67890\n", &mut out));
        assert!(p.error.unwrap().contains("max_item_bytes (10 bytes)"));
    }

    #[test]
    fn text_after_a_closing_quote_fails_instead_of_being_joined() {
        let c = cols(&["k", "v"]);
        for chunk in [1, 4, 64] {
            let (_, err) = parse_in_chunks(b"8,\"a\"b\n", &c, chunk);
            assert!(err.unwrap().contains("after its closing quote"));
        }
    }

    #[test]
    fn a_header_that_is_not_output_columns_fails() {
        let c = cols(&["key", "score"]);
        let (_, err) = parse_in_chunks(b"score,key\n1,2\n", &c, 3);
        assert!(err.unwrap().contains("looks like a CSV header"));
        let c3 = cols(&["key", "hour", "score"]);
        let (_, err) = parse_in_chunks(b"key,hour,value\n1,2,3\n", &c3, 3);
        assert!(err.unwrap().contains("looks like a CSV header"));
        // Rows that only share a value with the names are data.
        let (got, err) = parse_in_chunks(b"key,4\n3,key\n", &c, 3);
        assert_eq!((got.as_str(), err), ("key,4\n3,key\n", None));
        let (got, err) = parse_in_chunks(b"key,7,x y\n", &c3, 3);
        assert_eq!((got.as_str(), err), ("key,7,x y\n", None));
        let (got, err) = parse_in_chunks(b"key,score\n1,2\n", &c, 3);
        assert_eq!((got.as_str(), err), ("1,2\n", None));
    }

    #[test]
    fn a_wrong_field_count_names_the_record() {
        let c = cols(&["a", "b"]);
        let (_, err) = parse_in_chunks(b"1,2\n3,4,5\n", &c, 3);
        assert_eq!(
            err.unwrap(),
            "bad output: record 2 has 3 fields, expected 2 (a,b)"
        );
    }

    #[test]
    fn only_a_first_record_equal_to_the_header_is_dropped() {
        let c = cols(&["a", "b"]);
        let (got, _) = parse_in_chunks(b"1,2\na,b\n", &c, 100);
        assert_eq!(got, "1,2\na,b\n");
    }

    #[test]
    fn placeholders_render_and_unknown_ones_are_rejected() {
        let f = cols(&["ticker"]);
        let t = Template::parse("--x={key}/{ticker}/{{lit}}-{seed}", &f, 1).unwrap();
        let item = Item {
            index: 3,
            key: "A|1".into(),
            seed: 9,
            fields: vec![("ticker".into(), "A".into())],
        };
        assert_eq!(t.render(&item, 0, 0), "--x=A|1/A/{lit}-9");
        let e = Template::parse("{bogus}", &f, 2).unwrap_err().0;
        assert!(
            e.contains("command[2]") && e.contains("{bogus}") && e.contains("ticker"),
            "{e}"
        );
    }

    #[test]
    fn stdin_json_has_the_contract_shape() {
        let item = Item {
            index: 7,
            key: "AAPL|2024-01-02".into(),
            seed: 1234,
            fields: vec![
                ("ticker".into(), "AAPL".into()),
                ("date".into(), "2024-01-02".into()),
            ],
        };
        let v: serde_json::Value = serde_json::from_slice(&item_json(&item)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"index": 7, "key": "AAPL|2024-01-02", "seed": 1234,
                "fields": {"ticker": "AAPL", "date": "2024-01-02"}})
        );
    }
}
