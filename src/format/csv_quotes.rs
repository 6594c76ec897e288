//! Where a stream of CSV bytes stands with respect to quoting, read the way `csv-core` (the
//! parser of generator output) reads it: a `"` opens a quoted field only as a field's first byte,
//! `""` inside one is an escaped quote, and after the closing quote the field goes on unquoted.
//! The persistent framer uses it to see an end-of-item marker line only outside quotes, and the
//! output parser to refuse output that ends inside a quoted field or has text after a closing
//! quote (`"a"b`, which csv-core would read as `ab`).

/// The quoting state between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// At the start of a field (or of a line).
    #[default]
    FieldStart,
    /// Inside a field that did not start with a quote.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just after a `"` inside a quoted field: the next byte tells an escaped quote from the end.
    QuoteInQuoted,
}

/// The quoting state of the bytes seen so far, and whether any field had text after its
/// closing quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quotes {
    state: State,
    text_after_quote: bool,
}

impl Quotes {
    /// Consumes `data` up to and including its first line feed outside quotes and returns the
    /// position just after it; `None` (with all of `data` consumed) when it holds none.
    pub fn line_end(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Quoted => match memchr::memchr(b'"', &data[i..]) {
                    Some(p) => {
                        i += p + 1;
                        self.state = State::QuoteInQuoted;
                    }
                    None => return None,
                },
                State::QuoteInQuoted => {
                    let b = data[i];
                    i += 1;
                    self.state = match b {
                        b'"' => State::Quoted,
                        b',' | b'\r' => State::FieldStart,
                        b'\n' => {
                            self.state = State::FieldStart;
                            return Some(i);
                        }
                        _ => {
                            self.text_after_quote = true;
                            State::Unquoted
                        }
                    };
                }
                State::FieldStart if data[i] == b'"' => {
                    i += 1;
                    self.state = State::Quoted;
                }
                State::FieldStart | State::Unquoted => {
                    match memchr::memchr3(b'\n', b',', b'\r', &data[i..]) {
                        Some(p) => {
                            let b = data[i + p];
                            i += p + 1;
                            self.state = State::FieldStart;
                            if b == b'\n' {
                                return Some(i);
                            }
                        }
                        None => {
                            self.state = State::Unquoted;
                            return None;
                        }
                    }
                }
            }
        }
        None
    }

    /// Consumes all of `data`.
    pub fn consume(&mut self, mut data: &[u8]) {
        while let Some(p) = self.line_end(data) {
            data = &data[p..];
        }
    }

    /// True inside a quoted field that is not closed yet.
    pub fn in_quoted_field(self) -> bool {
        self.state == State::Quoted
    }

    /// True once a field had text after its closing quote (`"a"b`).
    pub fn text_after_quote(self) -> bool {
        self.text_after_quote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line ends outside quotes, fed in chunks of every size.
    fn line_ends(text: &[u8]) -> Vec<usize> {
        let mut want: Option<Vec<usize>> = None;
        for chunk in 1..=text.len().max(1) {
            let mut q = Quotes::default();
            let mut ends = Vec::new();
            let mut base = 0;
            for c in text.chunks(chunk) {
                let mut at = 0;
                while let Some(p) = q.line_end(&c[at..]) {
                    at += p;
                    ends.push(base + at);
                }
                base += c.len();
            }
            match &want {
                None => want = Some(ends),
                Some(w) => assert_eq!(&ends, w, "chunk {chunk}"),
            }
        }
        want.unwrap_or_default()
    }

    #[test]
    fn line_feeds_inside_quotes_do_not_end_a_line() {
        assert_eq!(line_ends(b"a,\"x\ny\"\nb\n"), [8, 10]);
        assert_eq!(line_ends(b"\"say \"\"hi\"\"\n\"\n"), [14]);
        // A quote that does not start a field is a plain byte, as csv-core reads it.
        assert_eq!(line_ends(b"ab\"c\nd\n"), [5, 7]);
        // After the closing quote the field goes on unquoted.
        assert_eq!(line_ends(b"\"a\"b\n\"\n\"\n"), [5, 9]);
        assert_eq!(line_ends(b"x\r\n\"\r\n\"\r\n"), [3, 9]);
    }

    #[test]
    fn an_open_quote_is_seen_at_the_end() {
        for (text, open) in [
            (&b"k,\"abc"[..], true),
            (b"k,\"abc\"", false),
            (b"k,\"a\"\"", true),
            (b"k,\"a\"\"\"", false),
            (b"k,a\"b", false),
            (b"", false),
        ] {
            let mut q = Quotes::default();
            q.consume(text);
            assert_eq!(
                q.in_quoted_field(),
                open,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
