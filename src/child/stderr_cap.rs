//! How much of a generator's stderr the shard log keeps per attempt: the first lines (where the
//! error usually is named) and the last ones (where a traceback ends), with a count of what was
//! left out between them. A generator that floods stderr then costs the log a bounded amount of
//! bytes and time per attempt, not the flood's size.

use std::collections::VecDeque;

/// Lines and bytes kept from the start of an attempt's stderr.
pub const HEAD_LINES: usize = 1000;
pub const HEAD_BYTES: usize = 256 << 10;
/// Lines and bytes kept from its end.
pub const TAIL_LINES: usize = 200;
pub const TAIL_BYTES: usize = 64 << 10;

/// One attempt's stderr on its way to the log.
#[derive(Default)]
pub struct StderrCap {
    head_lines: usize,
    head_bytes: usize,
    tail: VecDeque<Vec<u8>>,
    tail_bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl StderrCap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one line: passed to `log` while the head lasts, held for the tail after that.
    pub fn line(&mut self, line: &[u8], log: &mut dyn FnMut(&[u8])) {
        if self.head_lines < HEAD_LINES && self.head_bytes + line.len() <= HEAD_BYTES {
            self.head_lines += 1;
            self.head_bytes += line.len();
            log(line);
            return;
        }
        self.tail_bytes += line.len();
        self.tail.push_back(line.to_vec());
        while self.tail.len() > TAIL_LINES || self.tail_bytes > TAIL_BYTES {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len();
            self.dropped_lines += 1;
            self.dropped_bytes += old.len() as u64;
        }
    }

    /// Ends the attempt: `dropped(lines, bytes)` if anything was left out, then the tail lines.
    pub fn finish(&mut self, dropped: &mut dyn FnMut(u64, u64), log: &mut dyn FnMut(&[u8])) {
        if self.dropped_lines > 0 {
            dropped(self.dropped_lines, self.dropped_bytes);
        }
        for line in self.tail.drain(..) {
            log(&line);
        }
        *self = StderrCap::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_keeps_its_head_and_tail_and_counts_the_rest() {
        let mut cap = StderrCap::new();
        let mut logged = Vec::new();
        let total = HEAD_LINES + TAIL_LINES + 5000;
        for i in 0..total {
            cap.line(format!("line {i}").as_bytes(), &mut |l| {
                logged.push(l.to_vec())
            });
        }
        let mut dropped = None;
        cap.finish(&mut |n, b| dropped = Some((n, b)), &mut |l| {
            logged.push(l.to_vec())
        });
        assert_eq!(logged.len(), HEAD_LINES + TAIL_LINES);
        assert_eq!(logged[0], b"line 0");
        assert_eq!(
            logged.last().unwrap(),
            format!("line {}", total - 1).as_bytes()
        );
        assert_eq!(dropped.unwrap().0, 5000);
        // A quiet attempt logs everything and reports nothing.
        let mut n = 0;
        cap.line(b"x", &mut |_| n += 1);
        cap.finish(&mut |_, _| panic!("nothing dropped"), &mut |_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn long_lines_are_bounded_by_bytes() {
        let mut cap = StderrCap::new();
        let big = vec![b'x'; 8 << 10];
        let mut bytes = 0;
        for _ in 0..10_000 {
            cap.line(&big, &mut |l| bytes += l.len());
        }
        cap.finish(&mut |_, _| {}, &mut |l| bytes += l.len());
        assert!(bytes <= HEAD_BYTES + TAIL_BYTES, "{bytes}");
    }
}
