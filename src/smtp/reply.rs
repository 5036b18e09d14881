//! SMTP replies (RFC 5321 §4.2): an incremental parser with hard limits.
//!
//! Bytes go in as they arrive; whole replies come out. A reply is one or
//! more lines `ddd-text` ending with a line `ddd text` (or `ddd`), every
//! line with the same code. Anything else — a wrong code on a continuation
//! line, a non-digit, a line or reply beyond the caps — is a protocol error,
//! never a panic and never unbounded buffering.

use std::fmt;

/// The longest reply line accepted, CRLF included. RFC 5321 sets 512; real
/// servers send longer EHLO lines, so allow generous room, but bounded.
pub(crate) const MAX_LINE: usize = 4096;
/// The largest whole reply accepted (an EHLO reply is the biggest normal one).
pub(crate) const MAX_REPLY: usize = 64 * 1024;
/// The most lines one reply may have.
pub(crate) const MAX_LINES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, without code, separator and line ending.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx: the command was done. (3xx only means "go on", and only after
    /// DATA or AUTH, where the client checks the exact code.)
    pub fn is_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The RFC 3463 enhanced status code at the start of the first line
    /// ("5.1.1"), when the server sends one.
    pub fn enhanced(&self) -> Option<(u8, u16, u16)> {
        let first = self.lines.first()?;
        let token = first.split_whitespace().next()?;
        let mut parts = token.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some((class, subject, detail))
    }

    /// All lines joined, for messages: "550 5.1.1 No such user".
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError(pub String);

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    /// The reply being assembled: its code and lines so far.
    partial: Option<(u16, Vec<String>)>,
    partial_bytes: usize,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes. Refuses to buffer more than a line's worth of
    /// unterminated input.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ReplyError> {
        self.buf.extend_from_slice(bytes);
        if !self.buf.contains(&b'\n') && self.buf.len() > MAX_LINE {
            return Err(ReplyError(format!("a reply line is longer than {MAX_LINE} bytes")));
        }
        Ok(())
    }

    /// Bytes received that no complete reply has consumed yet. After the
    /// reply to STARTTLS this must be zero: anything else was injected
    /// before the handshake.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() + self.partial_bytes
    }

    /// The next complete reply, if one has arrived.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    return Err(ReplyError(format!("a reply line is longer than {MAX_LINE} bytes")));
                }
                return Ok(None);
            };
            if nl + 1 > MAX_LINE {
                return Err(ReplyError(format!("a reply line is longer than {MAX_LINE} bytes")));
            }
            let raw: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = raw.strip_suffix(b"\n").unwrap_or(&raw);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (code, last, text) = parse_line(line)?;
            self.partial_bytes += raw.len();
            if self.partial_bytes > MAX_REPLY {
                return Err(ReplyError(format!("a reply is larger than {MAX_REPLY} bytes")));
            }
            let (pcode, lines) = self.partial.get_or_insert_with(|| (code, Vec::new()));
            if *pcode != code {
                return Err(ReplyError(format!("a continuation line has code {code}, the reply began with {pcode}")));
            }
            if lines.len() == MAX_LINES {
                return Err(ReplyError(format!("a reply has more than {MAX_LINES} lines")));
            }
            lines.push(text);
            if last {
                let (code, lines) = self.partial.take().expect("set above");
                self.partial_bytes = 0;
                return Ok(Some(Reply { code, lines }));
            }
        }
    }
}

/// `ddd text`, `ddd-text` or `ddd`: the code, whether it is the last line,
/// and the text.
fn parse_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let shown = || String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(ReplyError(format!("not an SMTP reply line: {:?}", shown())));
    }
    let code = (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    if !(200..=599).contains(&code) {
        return Err(ReplyError(format!("reply code {code} is outside 200..599")));
    }
    let (last, rest) = match line.get(3) {
        None => (true, &line[3..3]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(ReplyError(format!("not an SMTP reply line: {:?}", shown()))),
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    if text.contains(['\r', '\0']) {
        return Err(ReplyError("a reply line contains a bare CR or NUL".into()));
    }
    Ok((code, last, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        p.feed(bytes)?;
        let mut out = Vec::new();
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn single_multi_and_pipelined_replies() {
        let r =
            parse_all(b"220 mx.example ESMTP ready\r\n250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n250\r\n")
                .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], Reply { code: 220, lines: vec!["mx.example ESMTP ready".into()] });
        assert_eq!(r[1].lines, vec!["mx.example", "PIPELINING", "SIZE 1000"]);
        assert_eq!(r[2], Reply { code: 250, lines: vec!["".into()] });
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_replies() {
        let input = b"250-a\r\n250-b\r\n250 c\r\n354 go ahead\r\n";
        let mut p = ReplyParser::new();
        let mut got = Vec::new();
        for b in input {
            p.feed(&[*b]).unwrap();
            while let Some(r) = p.next_reply().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, parse_all(input).unwrap());
        assert_eq!(p.pending_bytes(), 0);
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        for bad in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"250x\r\n",
            b"250-a\r\n251 b\r\n",
            b"099 low\r\n",
            b"600 high\r\n",
            b"2a0 x\r\n",
        ] {
            assert!(parse_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"250 ".as_slice(), &vec![b'x'; MAX_LINE], b"\r\n"].concat();
        assert!(parse_all(&long).is_err());
        let mut unterminated = ReplyParser::new();
        assert!(unterminated.feed(&vec![b'2'; MAX_LINE + 1]).is_err());
        let many: Vec<u8> = (0..MAX_LINES + 1).flat_map(|_| b"250-x\r\n".to_vec()).collect();
        assert!(parse_all(&many).is_err());
    }

    #[test]
    fn enhanced_status_codes() {
        let r = Reply { code: 550, lines: vec!["5.1.1 <nobody@example.com>: no such user".into()] };
        assert_eq!(r.enhanced(), Some((5, 1, 1)));
        assert_eq!(Reply { code: 250, lines: vec!["OK".into()] }.enhanced(), None);
        assert_eq!(Reply { code: 250, lines: vec!["1.2.3 nope".into()] }.enhanced(), None);
    }

    #[test]
    fn leftover_bytes_after_a_reply_are_visible() {
        let mut p = ReplyParser::new();
        p.feed(b"220 go ahead\r\n250 injected\r\n").unwrap();
        assert_eq!(p.next_reply().unwrap().unwrap().code, 220);
        assert_eq!(p.pending_bytes(), b"250 injected\r\n".len());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives, the parser answers with replies or an error,
        /// never a panic, and never holds more than its caps.
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'-'), Just(b' '), b'0'..=b'9', any::<u8>()], 0..64), 0..32)) {
            let mut p = ReplyParser::new();
            for chunk in chunks {
                if p.feed(&chunk).is_err() {
                    break;
                }
                while let Ok(Some(r)) = p.next_reply() {
                    prop_assert!((200..=599).contains(&r.code));
                }
                prop_assert!(p.pending_bytes() <= MAX_REPLY + MAX_LINE);
            }
        }
    }
}
