//! EHLO capabilities (RFC 5321 §4.1.1.1 and the extensions asock uses).
//! Parsed afresh from every EHLO reply: after STARTTLS the pre-TLS list is
//! thrown away (RFC 3207 §4.2), since a man in the middle could have
//! written it.

use super::reply::Reply;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    /// SIZE, with the server's limit when it states one (0 = no limit).
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub dsn: bool,
    /// AUTH mechanisms, upper-cased.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// From an EHLO reply: the first line is the greeting, each further line
    /// a keyword and its parameters. Unknown keywords are ignored.
    pub fn parse(reply: &Reply) -> Self {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "DSN" => caps.dsn = true,
                "AUTH" => {
                    for m in words {
                        let m = m.to_ascii_uppercase();
                        if !caps.auth.contains(&m) {
                            caps.auth.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }

    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth.iter().any(|m| m == mechanism)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typical_ehlo_reply() {
        let lines = [
            "mx.example greets you",
            "PIPELINING",
            "SIZE 10240000",
            "STARTTLS",
            "auth plain LOGIN",
            "AUTH XOAUTH2 PLAIN",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "DSN",
            "X-UNKNOWN 1",
        ];
        let caps = Capabilities::parse(&Reply { code: 250, lines: lines.iter().map(|s| s.to_string()).collect() });
        assert!(
            caps.pipelining
                && caps.starttls
                && caps.eight_bit_mime
                && caps.smtputf8
                && caps.enhanced_status_codes
                && caps.dsn
        );
        assert_eq!(caps.size, Some(10_240_000));
        assert_eq!(caps.auth, vec!["PLAIN", "LOGIN", "XOAUTH2"]);
        assert!(caps.supports_auth("LOGIN"));
    }

    #[test]
    fn the_greeting_line_is_not_a_capability_and_size_may_have_no_limit() {
        let caps = Capabilities::parse(&Reply { code: 250, lines: vec!["STARTTLS".into(), "SIZE".into()] });
        assert!(!caps.starttls);
        assert_eq!(caps.size, Some(0));
    }
}
