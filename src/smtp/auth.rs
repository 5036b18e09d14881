//! SMTP AUTH (RFC 4954): PLAIN, LOGIN and XOAUTH2, chosen from what the
//! server offers. Secrets leave this module only base64-encoded inside
//! commands the session marks as secret, so traces show `***` instead.

use super::caps::Capabilities;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Password { user: String, password: String },
    OAuth2 { user: String, token: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, even in a debug print.
        match self {
            Credentials::Password { user, .. } => write!(f, "Password({user}, ***)"),
            Credentials::OAuth2 { user, .. } => write!(f, "OAuth2({user}, ***)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    XOAuth2,
}

/// The mechanism to use, or why none fits.
pub fn choose(creds: &Credentials, caps: &Capabilities) -> Result<Mechanism, String> {
    let offered = if caps.auth.is_empty() { "nothing".to_owned() } else { caps.auth.join(" ") };
    match creds {
        Credentials::OAuth2 { .. } if caps.supports_auth("XOAUTH2") => Ok(Mechanism::XOAuth2),
        Credentials::OAuth2 { .. } => Err(format!("the server does not offer AUTH XOAUTH2 (it offers {offered})")),
        Credentials::Password { .. } if caps.supports_auth("PLAIN") => Ok(Mechanism::Plain),
        Credentials::Password { .. } if caps.supports_auth("LOGIN") => Ok(Mechanism::Login),
        Credentials::Password { .. } => {
            Err(format!("the server offers no password mechanism asock supports (PLAIN, LOGIN); it offers {offered}"))
        }
    }
}

/// The first command: `AUTH <mechanism> [initial response]`.
pub fn initial(mechanism: Mechanism, creds: &Credentials) -> String {
    match (mechanism, creds) {
        (Mechanism::Plain, Credentials::Password { user, password }) => {
            format!("AUTH PLAIN {}", B64.encode(format!("\0{user}\0{password}")))
        }
        (Mechanism::XOAuth2, Credentials::OAuth2 { user, token }) => {
            format!("AUTH XOAUTH2 {}", B64.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01")))
        }
        _ => "AUTH LOGIN".to_owned(),
    }
}

/// The answer to the server's `step`th 334 challenge during LOGIN (0 =
/// user name, 1 = password); XOAUTH2's 334 carries an error, answered
/// with an empty line so the server finishes with its failure code.
pub fn respond(mechanism: Mechanism, creds: &Credentials, step: u32) -> Option<String> {
    match (mechanism, creds, step) {
        (Mechanism::Login, Credentials::Password { user, .. }, 0) => Some(B64.encode(user)),
        (Mechanism::Login, Credentials::Password { password, .. }, 1) => Some(B64.encode(password)),
        (Mechanism::XOAuth2, _, 0) => Some(String::new()),
        _ => None,
    }
}

/// A 334 challenge's decoded text, for a failure message (XOAUTH2 sends
/// its error as base64 JSON).
pub fn decode_challenge(text: &str) -> String {
    B64.decode(text.trim()).ok().and_then(|b| String::from_utf8(b).ok()).unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(auth: &[&str]) -> Capabilities {
        Capabilities { auth: auth.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn chooses_from_what_is_offered() {
        let pw = Credentials::Password { user: "u".into(), password: "p".into() };
        let tok = Credentials::OAuth2 { user: "u".into(), token: "t".into() };
        assert_eq!(choose(&pw, &caps(&["LOGIN", "PLAIN"])), Ok(Mechanism::Plain));
        assert_eq!(choose(&pw, &caps(&["LOGIN"])), Ok(Mechanism::Login));
        assert!(choose(&pw, &caps(&["CRAM-MD5"])).unwrap_err().contains("CRAM-MD5"));
        assert!(choose(&pw, &caps(&[])).is_err());
        assert_eq!(choose(&tok, &caps(&["PLAIN", "XOAUTH2"])), Ok(Mechanism::XOAuth2));
        assert!(choose(&tok, &caps(&["PLAIN"])).is_err());
    }

    #[test]
    fn encodes_rfc_4616_and_xoauth2() {
        let pw = Credentials::Password { user: "user".into(), password: "pässword".into() };
        let line = initial(Mechanism::Plain, &pw);
        let b = B64.decode(line.strip_prefix("AUTH PLAIN ").unwrap()).unwrap();
        assert_eq!(b, "\0user\0pässword".as_bytes());
        assert_eq!(initial(Mechanism::Login, &pw), "AUTH LOGIN");
        assert_eq!(respond(Mechanism::Login, &pw, 0).unwrap(), B64.encode("user"));
        assert_eq!(respond(Mechanism::Login, &pw, 1).unwrap(), B64.encode("pässword"));
        assert_eq!(respond(Mechanism::Login, &pw, 2), None);
        let tok = Credentials::OAuth2 { user: "a@b".into(), token: "ya29".into() };
        let line = initial(Mechanism::XOAuth2, &tok);
        let b = B64.decode(line.strip_prefix("AUTH XOAUTH2 ").unwrap()).unwrap();
        assert_eq!(b, b"user=a@b\x01auth=Bearer ya29\x01\x01");
        assert_eq!(decode_challenge(&B64.encode("{\"status\":\"401\"}")), "{\"status\":\"401\"}");
        assert!(!format!("{pw:?}").contains("pässword"));
    }
}
