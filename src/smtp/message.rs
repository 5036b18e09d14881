//! A mail message (.NET MailMessage): validated when set, rendered to MIME
//! with the `mail-builder` crate when sent.
//!
//! Everything a user hands in is checked on the way in, so nothing unsafe
//! ever reaches the wire: a CR, LF or NUL in an address, display name,
//! subject or header is `Argument` (header injection), a malformed address
//! is `Format`. Rendering adds Date, Message-ID and MIME-Version, encodes
//! non-ASCII display names and subjects per RFC 2047, keeps every line
//! within 998 octets (quoted-printable or base64 bodies), and never writes
//! Bcc: blind copies live in the envelope only.

use crate::error::{Error, Result, ASOCK_E_FORMAT};
use mail_builder::headers::address::Address;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;

/// An address with its optional display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub address: String,
    pub display_name: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    #[default]
    Normal,
    Low,
    High,
}

#[derive(Clone, Debug, Default)]
pub struct MailMessage {
    pub from: Option<Mailbox>,
    pub sender: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub subject: String,
    pub body: String,
    pub body_is_html: bool,
    /// Further renderings of the body (.NET AlternateViews): content and
    /// media type, e.g. a text/html view next to a text/plain body.
    pub alternate_views: Vec<(String, String)>,
    /// File name, media type, content.
    pub attachments: Vec<(String, String, Vec<u8>)>,
    pub headers: Vec<(String, String)>,
    pub priority: Priority,
    /// .NET DeliveryNotificationOptions flags (`DSN_*`), sent as RCPT
    /// NOTIFY= (RFC 3461) when the server offers DSN.
    pub delivery_notification: u32,
}

pub(crate) const DSN_ON_SUCCESS: u32 = 1;
pub(crate) const DSN_ON_FAILURE: u32 = 2;
pub(crate) const DSN_DELAY: u32 = 4;
pub(crate) const DSN_NEVER: u32 = 0x0800_0000;

/// Headers the message writes itself: a custom one of these names would
/// contradict it (or, for Bcc, leak the blind copies).
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "x-priority",
    "priority",
    "importance",
];

/// CR, LF and NUL: anything that could end a header line or a command.
fn check_no_breaks(what: &str, text: &str) -> Result<()> {
    if text.contains(['\r', '\n', '\0']) {
        return Err(Error::argument(format!("{what} contains a CR, LF or NUL character")));
    }
    Ok(())
}

impl Mailbox {
    /// Validates an address (RFC 5321 / 5322 syntax, UTF-8 allowed for
    /// SMTPUTF8) and its display name.
    pub fn new(address: &str, display_name: Option<&str>) -> Result<Mailbox> {
        check_no_breaks("the address", address)?;
        if let Some(name) = display_name {
            check_no_breaks("the display name", name)?;
        }
        let address = address.trim();
        // Angle brackets or a display name inside the address field are
        // what a caller means by "Name <a@b>": reject, the name has its own
        // argument.
        if !email_address::EmailAddress::is_valid(address) || address.contains(['<', '>', ' ']) {
            return Err(Error::new(ASOCK_E_FORMAT, format!("'{address}' is not a valid mail address")));
        }
        Ok(Mailbox {
            address: address.to_owned(),
            display_name: display_name.filter(|n| !n.is_empty()).map(str::to_owned),
        })
    }

    fn header_value(&self) -> Address<'_> {
        match &self.display_name {
            Some(name) => Address::new_address(Some(name.as_str()), self.address.as_str()),
            None => Address::new_address(None::<&str>, self.address.as_str()),
        }
    }

    pub fn is_ascii(&self) -> bool {
        self.address.is_ascii()
    }
}

impl MailMessage {
    pub fn set_subject(&mut self, subject: &str) -> Result<()> {
        check_no_breaks("the subject", subject)?;
        self.subject = subject.to_owned();
        Ok(())
    }

    pub fn add_header(&mut self, name: &str, value: &str) -> Result<()> {
        check_no_breaks("the header name", name)?;
        check_no_breaks("the header value", value)?;
        let valid_name = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !valid_name {
            return Err(Error::new(ASOCK_E_FORMAT, format!("'{name}' is not a valid header name")));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(Error::argument(format!("the {name} header is written by the message itself; use its setter")));
        }
        self.headers.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    pub fn add_alternate_view(&mut self, content: &str, media_type: &str) -> Result<()> {
        check_media_type(media_type)?;
        self.alternate_views.push((content.to_owned(), media_type.to_owned()));
        Ok(())
    }

    pub fn add_attachment(&mut self, name: &str, media_type: &str, data: &[u8]) -> Result<()> {
        check_no_breaks("the attachment name", name)?;
        if name.is_empty() {
            return Err(Error::argument("the attachment name is empty"));
        }
        check_media_type(media_type)?;
        self.attachments.push((name.to_owned(), media_type.to_owned(), data.to_vec()));
        Ok(())
    }

    /// The envelope: the reverse path and every recipient (To, Cc and Bcc,
    /// each address once).
    pub fn envelope(&self) -> Option<(String, Vec<String>)> {
        let from = self.from.as_ref()?.address.clone();
        let mut rcpts: Vec<String> = Vec::new();
        for m in self.to.iter().chain(&self.cc).chain(&self.bcc) {
            if !rcpts.iter().any(|r| r.eq_ignore_ascii_case(&m.address)) {
                rcpts.push(m.address.clone());
            }
        }
        Some((from, rcpts))
    }

    /// Sets the delivery notification flags; Never excludes the others.
    pub fn set_delivery_notification(&mut self, flags: u32) -> Result<()> {
        let known = DSN_ON_SUCCESS | DSN_ON_FAILURE | DSN_DELAY | DSN_NEVER;
        if flags & !known != 0 || (flags & DSN_NEVER != 0 && flags != DSN_NEVER) {
            return Err(Error::argument(format!(
                "delivery notification flags {flags:#x} are not a combination of OnSuccess, OnFailure and Delay, or Never alone"
            )));
        }
        self.delivery_notification = flags;
        Ok(())
    }

    /// The RCPT NOTIFY= value, if any notification was asked for.
    pub fn dsn_notify(&self) -> Option<String> {
        let f = self.delivery_notification;
        if f == DSN_NEVER {
            return Some("NEVER".into());
        }
        let words: Vec<&str> = [(DSN_ON_SUCCESS, "SUCCESS"), (DSN_ON_FAILURE, "FAILURE"), (DSN_DELAY, "DELAY")]
            .iter()
            .filter(|(bit, _)| f & bit != 0)
            .map(|(_, w)| *w)
            .collect();
        (!words.is_empty()).then(|| words.join(","))
    }

    /// Whether any envelope address needs SMTPUTF8 (RFC 6531).
    pub fn needs_smtputf8(&self) -> bool {
        self.from.iter().chain(&self.to).chain(&self.cc).chain(&self.bcc).any(|m| !m.is_ascii())
    }

    /// The message as MIME bytes, lines ending in CRLF.
    pub fn render(&self) -> Result<Vec<u8>> {
        let mut b = MessageBuilder::new();
        if let Some(from) = &self.from {
            b = b.from(from.header_value());
        }
        if let Some(sender) = &self.sender {
            b = b.sender(sender.header_value());
        }
        fn list(v: &[Mailbox]) -> Address<'_> {
            Address::new_list(v.iter().map(Mailbox::header_value).collect())
        }
        if !self.to.is_empty() {
            b = b.to(list(&self.to));
        }
        if !self.cc.is_empty() {
            b = b.cc(list(&self.cc));
        }
        if !self.reply_to.is_empty() {
            b = b.reply_to(list(&self.reply_to));
        }
        // Never Bcc: blind copies are envelope recipients only.
        if !self.subject.is_empty() {
            b = b.subject(self.subject.as_str());
        }
        match self.priority {
            Priority::Normal => {}
            // The three headers .NET writes, for every client that reads one.
            Priority::High => {
                b = b
                    .header("X-Priority", Text::new("1"))
                    .header("Priority", Text::new("urgent"))
                    .header("Importance", Text::new("high"));
            }
            Priority::Low => {
                b = b
                    .header("X-Priority", Text::new("5"))
                    .header("Priority", Text::new("non-urgent"))
                    .header("Importance", Text::new("low"));
            }
        }
        for (name, value) in &self.headers {
            b = b.header(name.as_str(), Text::new(value.as_str()));
        }
        let main = MimePart::new(
            if self.body_is_html { "text/html" } else { "text/plain" },
            BodyPart::Text(self.body.as_str().into()),
        );
        let content = if self.alternate_views.is_empty() {
            main
        } else {
            let mut parts = vec![main];
            for (content, media_type) in &self.alternate_views {
                parts.push(MimePart::new(media_type.as_str(), BodyPart::Text(content.as_str().into())));
            }
            MimePart::new("multipart/alternative", parts)
        };
        let content = if self.attachments.is_empty() {
            content
        } else {
            let mut parts = vec![content];
            for (name, media_type, data) in &self.attachments {
                parts.push(
                    MimePart::new(media_type.as_str(), BodyPart::Binary(data.as_slice().into()))
                        .attachment(name.as_str()),
                );
            }
            MimePart::new("multipart/mixed", parts)
        };
        b = b.body(content);
        b.write_to_vec().map_err(|e| Error::new(crate::error::ASOCK_E_IO, format!("render the message: {e}")))
    }
}

fn check_media_type(media_type: &str) -> Result<()> {
    check_no_breaks("the media type", media_type)?;
    let mut parts = media_type.split('/');
    let token = |s: Option<&str>| {
        s.is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b)))
    };
    if !(token(parts.next()) && token(parts.next()) && parts.next().is_none()) {
        return Err(Error::new(ASOCK_E_FORMAT, format!("'{media_type}' is not a media type like text/html")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::*;

    fn sample() -> MailMessage {
        let mut m = MailMessage {
            from: Some(Mailbox::new("alice@example.com", Some("Alice Ärger")).unwrap()),
            to: vec![Mailbox::new("bob@example.com", None).unwrap()],
            cc: vec![Mailbox::new("carol@example.com", Some("Carol")).unwrap()],
            bcc: vec![Mailbox::new("secret@example.com", None).unwrap()],
            body: "Hello\n.leading dot\nbye".into(),
            ..Default::default()
        };
        m.set_subject("Grüße aus Köln").unwrap();
        m
    }

    fn text(m: &MailMessage) -> String {
        String::from_utf8(m.render().unwrap()).unwrap()
    }

    #[test]
    fn headers_are_written_and_bcc_is_not() {
        let t = text(&sample());
        for h in ["From: ", "To: ", "Cc: ", "Subject: =?utf-8?", "Date: ", "Message-ID: ", "MIME-Version: 1.0"] {
            assert!(t.contains(h), "missing {h} in\n{t}");
        }
        // No Bcc header line (not a substring test: Message-ID's random hex
        // can spell "bcc").
        assert!(!t.lines().any(|l| l.to_ascii_lowercase().starts_with("bcc:")), "{t}");
        assert!(!t.contains("secret@example.com"));
        let (from, rcpts) = sample().envelope().unwrap();
        assert_eq!(from, "alice@example.com");
        assert_eq!(rcpts, vec!["bob@example.com", "carol@example.com", "secret@example.com"]);
    }

    #[test]
    fn every_line_is_crlf_and_at_most_998_octets() {
        let mut m = sample();
        m.body = "x".repeat(5000) + "\n" + &"ü".repeat(3000);
        m.add_attachment("data.bin", "application/octet-stream", &[0xFFu8; 10_000]).unwrap();
        m.add_alternate_view("<p>hi</p>", "text/html").unwrap();
        let raw = m.render().unwrap();
        for line in raw.split(|&b| b == b'\n') {
            assert!(line.len() <= 999, "a line of {} octets", line.len());
        }
        for (i, b) in raw.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(raw[i - 1], b'\r', "bare LF at {i}");
            }
        }
        let t = String::from_utf8_lossy(&raw);
        assert!(
            t.contains("multipart/mixed") && t.contains("multipart/alternative") && t.contains("filename=\"data.bin\"")
        );
    }

    #[test]
    fn injection_is_refused_when_set() {
        assert_eq!(Mailbox::new("a@b.com\r\nRCPT TO:<x@y>", None).unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(Mailbox::new("a@b.com", Some("Eve\nBcc: x@y")).unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(Mailbox::new("a\0@b.com", None).unwrap_err().code(), ASOCK_E_ARGUMENT);
        let mut m = MailMessage::default();
        assert_eq!(m.set_subject("hi\r\nBcc: x@y").unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(m.add_header("X-Tag", "v\nBcc: x").unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(m.add_header("X-Bad\r\n", "v").unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(m.add_header("Bcc", "x@y").unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(m.add_header("Bad Name", "v").unwrap_err().code(), ASOCK_E_FORMAT);
        assert_eq!(m.add_attachment("a\r\n.txt", "text/plain", b"").unwrap_err().code(), ASOCK_E_ARGUMENT);
        assert_eq!(m.add_alternate_view("x", "html").unwrap_err().code(), ASOCK_E_FORMAT);
        m.add_header("X-Mailer-Id", "42").unwrap();
    }

    #[test]
    fn address_syntax() {
        for bad in ["", "plain", "@example.com", "a@", "a b@example.com", "Alice <a@example.com>", "a@@b.com"] {
            assert_eq!(Mailbox::new(bad, None).unwrap_err().code(), ASOCK_E_FORMAT, "{bad}");
        }
        for good in ["a@example.com", "first.last+tag@sub.example.org", "用户@例子.广告"] {
            Mailbox::new(good, None).unwrap();
        }
        let mut m = sample();
        assert!(!m.needs_smtputf8());
        m.to.push(Mailbox::new("用户@例子.广告", None).unwrap());
        assert!(m.needs_smtputf8());
    }

    #[test]
    fn priority_headers() {
        let mut m = sample();
        m.priority = Priority::High;
        let t = text(&m);
        assert!(t.contains("X-Priority: 1") && t.contains("Importance: high"), "{t}");
        m.priority = Priority::Low;
        assert!(text(&m).contains("X-Priority: 5"));
        m.priority = Priority::Normal;
        assert!(!text(&m).contains("X-Priority"));
    }

    #[test]
    fn delivery_notification_flags() {
        let mut m = MailMessage::default();
        assert_eq!(m.dsn_notify(), None);
        m.set_delivery_notification(DSN_ON_SUCCESS | DSN_ON_FAILURE).unwrap();
        assert_eq!(m.dsn_notify().as_deref(), Some("SUCCESS,FAILURE"));
        m.set_delivery_notification(DSN_DELAY).unwrap();
        assert_eq!(m.dsn_notify().as_deref(), Some("DELAY"));
        m.set_delivery_notification(DSN_NEVER).unwrap();
        assert_eq!(m.dsn_notify().as_deref(), Some("NEVER"));
        assert!(m.set_delivery_notification(DSN_NEVER | DSN_DELAY).is_err());
        assert!(m.set_delivery_notification(8).is_err());
        assert_eq!(m.dsn_notify().as_deref(), Some("NEVER"), "a refused value changes nothing");
    }
}
