//! Pickup-directory delivery (.NET SpecifiedPickupDirectory): the message
//! as a `<unique>.eml` file for a mail server to collect, with the
//! envelope in X-Sender / X-Receiver headers. The file appears whole or
//! not at all: it is written under a dot-name no pickup service reads,
//! synced, then renamed.

use crate::error::{Error, Result, ASOCK_E_IO};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Checks a directory given to `set_pickup_directory`: absolute, since a
/// relative one would depend on whatever the process's working directory
/// happens to be when a send runs.
pub fn check_dir(path: &str) -> Result<PathBuf> {
    if path.contains(['\r', '\n']) {
        return Err(Error::argument("the pickup directory contains a CR or LF"));
    }
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(Error::argument(format!("the pickup directory '{path}' is not an absolute path")));
    }
    Ok(p)
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{n:x}", nanos, std::process::id())
}

/// Writes one message; returns the file's path.
pub fn write(dir: &Path, from: &str, rcpts: &[String], message: &[u8]) -> Result<PathBuf> {
    let io = |what: &str, e: std::io::Error| Error::new(ASOCK_E_IO, format!("pickup directory: {what}: {e}"));
    if !dir.is_dir() {
        return Err(Error::new(ASOCK_E_IO, format!("the pickup directory '{}' does not exist", dir.display())));
    }
    let name = unique_name();
    let tmp = dir.join(format!(".{name}.tmp"));
    let done = dir.join(format!("{name}.eml"));
    let mut head = format!("X-Sender: {from}\r\n");
    for r in rcpts {
        head.push_str(&format!("X-Receiver: {r}\r\n"));
    }
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| io("create", e))?;
        f.write_all(head.as_bytes()).and_then(|_| f.write_all(message)).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        std::fs::rename(&tmp, &done).map_err(|e| io("rename", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|_| done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_with_the_envelope() {
        let dir = std::env::temp_dir().join(format!("asock-pickup-{}", unique_name()));
        std::fs::create_dir(&dir).unwrap();
        let a = write(&dir, "a@x.test", &["b@y.test".into(), "c@z.test".into()], b"Subject: s\r\n\r\nhi\r\n").unwrap();
        let b = write(&dir, "a@x.test", &["b@y.test".into()], b"x").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.extension().unwrap(), "eml");
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(
            text,
            "X-Sender: a@x.test\r\nX-Receiver: b@y.test\r\nX-Receiver: c@z.test\r\nSubject: s\r\n\r\nhi\r\n"
        );
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(write(&dir, "a@x.test", &[], b"x").unwrap_err().code(), ASOCK_E_IO);
        assert!(check_dir("relative/dir").is_err());
        assert!(check_dir("/abs").is_ok());
    }
}
