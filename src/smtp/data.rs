//! The DATA payload: line endings normalized, dots stuffed, terminated.
//!
//! Every bare CR and every bare LF becomes CRLF *before* dot-stuffing, so no
//! byte sequence a user hands in can form `<LF>.<LF>`, `<CR><LF>.<LF>` or any
//! other end-of-data variant that some server might honour: the SMTP
//! smuggling class of attacks (CVE-2023-51764/51765/51766) has nothing to
//! work with. Then every line that starts with '.' gets one more (RFC 5321
//! §4.5.2), the payload ends with CRLF, and `.` CRLF closes it — appended to
//! the same buffer, so it leaves in the same write as the end of the body.

/// Appends the DATA payload for `body` to `out`.
///
/// Runs of ordinary bytes are copied whole (found with `memchr`): a
/// rendered message is mostly such runs, so this costs about a copy.
pub fn encode(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut rest = body;
    loop {
        // At a line start: stuff a leading dot.
        if rest.first() == Some(&b'.') {
            out.push(b'.');
        }
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                out.extend_from_slice(rest);
                if !rest.is_empty() {
                    out.extend_from_slice(b"\r\n");
                }
                break;
            }
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(b"\r\n");
                // CRLF, bare CR and bare LF all end the line as CRLF.
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[i + skip..];
                if rest.is_empty() {
                    break;
                }
            }
        }
    }
    out.extend_from_slice(b".\r\n");
}

/// What a receiving server makes of a payload: the lines up to the
/// terminator, dots unstuffed. None if there is no proper terminator or
/// it is not at the very end. (For tests, and for reading back pickup files.)
pub fn decode(wire: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(wire.len());
    let mut rest = wire;
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line == b"." {
            return rest.is_empty().then_some(out);
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
}

/// `body` with every line ending made CRLF and a final CRLF when missing:
/// what `decode(encode(body))` gives back.
pub fn normalize(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire(body: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        encode(body, &mut w);
        w
    }

    #[test]
    fn smuggling_sequences_become_plain_lines() {
        for body in
            [&b"a\n.\nMAIL FROM:<x>\n"[..], b"a\r\n.\r\nRSET\r\n", b"a\n.\r\nQUIT\r\n", b"a\r.\rb", b"a\r\n.\nb"]
        {
            let w = wire(body);
            // The only end-of-data in the payload is the one at its end.
            assert_eq!(w.windows(5).filter(|x| x == b"\r\n.\r\n").count(), 1, "{:?}", String::from_utf8_lossy(&w));
            assert!(w.ends_with(b"\r\n.\r\n"));
            // No bare CR or LF survives.
            for (i, b) in w.iter().enumerate() {
                if *b == b'\n' {
                    assert_eq!(w[i - 1], b'\r');
                }
                if *b == b'\r' {
                    assert_eq!(w[i + 1], b'\n');
                }
            }
            assert_eq!(decode(&w).unwrap(), normalize(body));
        }
    }

    #[test]
    fn dots_are_stuffed_and_the_end_is_added() {
        assert_eq!(wire(b".hidden\r\n..two\r\nlast"), b"..hidden\r\n...two\r\nlast\r\n.\r\n");
        assert_eq!(wire(b""), b".\r\n");
        assert_eq!(wire(b"."), b"..\r\n.\r\n");
        assert_eq!(decode(b"x\r\n.\r\nextra"), None);
        assert_eq!(decode(b"no end\r\n"), None);
    }

    proptest! {
        #[test]
        fn encoding_unstuffs_back_to_the_normalized_body(body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..400)) {
            let w = wire(&body);
            prop_assert_eq!(decode(&w), Some(normalize(&body)));
            prop_assert_eq!(w.windows(5).filter(|x| x == b"\r\n.\r\n").count() + usize::from(w == b".\r\n"), 1);
        }
    }
}
