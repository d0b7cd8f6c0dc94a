//! Reading an executor's stdout as lines, whatever it prints.
//!
//! Executors print JSONL, but a turn must survive what a broken or hostile one prints instead:
//! bytes that are not UTF-8 are decoded lossily (U+FFFD), and a line longer than the cap is
//! skipped up to its newline and reported as [`Line::TooLong`], after which reading goes on.
//! Neither ends the turn.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

#[derive(Debug, PartialEq)]
pub enum Line {
    Text(String),
    /// A line over the cap was skipped; its length in bytes.
    TooLong(usize),
}

pub struct LossyLines {
    max: usize,
    /// Bytes already searched for a newline in the buffer.
    searched: usize,
    /// Inside an over-long line: bytes dropped so far.
    discarding: Option<usize>,
}

impl LossyLines {
    pub fn new(max: usize) -> LossyLines {
        LossyLines {
            max,
            searched: 0,
            discarding: None,
        }
    }
}

fn text(mut b: &[u8]) -> String {
    if b.last() == Some(&b'\r') {
        b = &b[..b.len() - 1];
    }
    String::from_utf8_lossy(b).into_owned()
}

impl Decoder for LossyLines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        loop {
            let nl = buf[self.searched..].iter().position(|&b| b == b'\n');
            match (nl, self.discarding) {
                (Some(i), Some(dropped)) => {
                    let end = self.searched + i;
                    let _ = buf.split_to(end + 1);
                    self.searched = 0;
                    self.discarding = None;
                    return Ok(Some(Line::TooLong(dropped + end)));
                }
                (None, Some(dropped)) => {
                    let n = buf.len();
                    let _ = buf.split_to(n);
                    self.searched = 0;
                    self.discarding = Some(dropped + n);
                    return Ok(None);
                }
                (Some(i), None) => {
                    let end = self.searched + i;
                    let line = buf.split_to(end + 1);
                    self.searched = 0;
                    if end > self.max {
                        return Ok(Some(Line::TooLong(end)));
                    }
                    return Ok(Some(Line::Text(text(&line[..end]))));
                }
                (None, None) => {
                    if buf.len() > self.max {
                        self.discarding = Some(0);
                        continue;
                    }
                    self.searched = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        if let Some(l) = self.decode(buf)? {
            return Ok(Some(l));
        }
        if let Some(dropped) = self.discarding.take() {
            let n = buf.len();
            buf.clear();
            self.searched = 0;
            return Ok(Some(Line::TooLong(dropped + n)));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let n = buf.len();
        let line = buf.split_to(n);
        self.searched = 0;
        Ok(Some(Line::Text(text(&line))))
    }
}

/// Holds back a banner an executor prints first on stderr ([`crate::executor::Executor::stderr_banner`])
/// and drops it once whole; anything else (a different start, or the stream ending inside
/// the banner) is passed on unchanged, held bytes first.
pub struct SkipBanner {
    banner: &'static [u8],
    /// Bytes of the banner matched so far.
    seen: usize,
    done: bool,
}

impl SkipBanner {
    pub fn new(banner: Option<&'static str>) -> SkipBanner {
        let banner = banner.unwrap_or_default().as_bytes();
        SkipBanner {
            banner,
            seen: 0,
            done: banner.is_empty(),
        }
    }

    /// What of `chunk` (with anything held before it) to pass on now.
    pub fn pass<'a>(&mut self, chunk: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        if self.done {
            return Cow::Borrowed(chunk);
        }
        let want = &self.banner[self.seen..];
        let n = want.len().min(chunk.len());
        if chunk[..n] == want[..n] {
            self.seen += n;
            if self.seen == self.banner.len() {
                self.done = true;
                return Cow::Borrowed(&chunk[n..]);
            }
            return Cow::Borrowed(&[]);
        }
        self.done = true;
        let mut held = self.banner[..self.seen].to_vec();
        held.extend_from_slice(chunk);
        Cow::Owned(held)
    }

    /// At the end of the stream: a banner cut short is not the banner, and is passed on.
    pub fn end(&mut self) -> &'static [u8] {
        if self.done {
            return &[];
        }
        self.done = true;
        &self.banner[..self.seen]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize) -> Vec<Line> {
        let mut d = LossyLines::new(max);
        let mut out = Vec::new();
        // Feed in small chunks, as a pipe would.
        let mut buf = BytesMut::new();
        for chunk in input.chunks(3) {
            buf.extend_from_slice(chunk);
            while let Some(l) = d.decode(&mut buf).unwrap() {
                out.push(l);
            }
        }
        while let Some(l) = d.decode_eof(&mut buf).unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn bad_bytes_and_long_lines_do_not_stop_reading() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend_from_slice(b"caf\xe9\n");
        input.extend_from_slice(&[b'x'; 40]);
        input.extend_from_slice(b"\nok\r\nlast");
        assert_eq!(
            all(&input, 16),
            vec![
                Line::Text("{\"a\":1}".into()),
                Line::Text("caf\u{fffd}".into()),
                Line::TooLong(40),
                Line::Text("ok".into()),
                Line::Text("last".into()),
            ]
        );
    }

    /// Codex's banner is dropped however the stream is cut; anything else passes whole.
    #[test]
    fn the_banner_is_dropped_and_nothing_else() {
        let banner = Some("Reading prompt from stdin...\n");
        let run = |chunks: &[&[u8]]| {
            let mut f = SkipBanner::new(banner);
            let mut out = Vec::new();
            for c in chunks {
                out.extend_from_slice(&f.pass(c));
            }
            out.extend_from_slice(f.end());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(run(&[b"Reading prompt from stdin...\n"]), "");
        assert_eq!(
            run(&[b"Reading prompt ", b"from stdin...\nwarn: x\n"]),
            "warn: x\n"
        );
        assert_eq!(
            run(&[b"Reading prompt from stdin...\n", b"error: y\n"]),
            "error: y\n"
        );
        assert_eq!(
            run(&[b"Reading prompt ", b"FROM\n"]),
            "Reading prompt FROM\n"
        );
        assert_eq!(
            run(&[b"Reading prompt"]),
            "Reading prompt",
            "cut short: kept"
        );
        assert_eq!(
            run(&[b"error: z\n", b"Reading prompt from stdin...\n"]),
            "error: z\nReading prompt from stdin...\n",
            "only at the start"
        );
        let mut none = SkipBanner::new(None);
        assert_eq!(
            &*none.pass(b"Reading prompt from stdin...\n"),
            b"Reading prompt from stdin...\n"
        );
    }
}
