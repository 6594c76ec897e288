//! Writing the binaries' results to stdout. A reader that goes away (`merge | head -1`,
//! `monitor --follow | grep -m1 done`) ends the program quietly with exit 0, as ripgrep does,
//! instead of the panic `println!` gives on a closed pipe. The work itself is done by then (a
//! merge's dataset is in place before its summary is printed).

use std::io::Write;

/// Writes `text` to stdout and flushes it; on a closed pipe the process exits 0. Any other
/// failure (a full disk behind a redirection) is reported on stderr once and otherwise ignored:
/// stdout only carries a report of work that is already done.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| eprintln!("warning: cannot write to stdout: {e}"));
    }
}

/// [`print()`] with a newline.
pub fn println(text: &str) {
    print(&format!("{text}\n"));
}
