//! One SMTP connection's bytes: a non-blocking TCP socket, with rustls
//! layered on once TLS starts (implicitly or after STARTTLS).
//!
//! The loop reports readiness edge-triggered, so `read` and `flush` go on
//! until the kernel says `WouldBlock`; the caller only decides what the
//! bytes mean.

use rustls::ClientConnection;
use socket2::Socket;
use std::io::{self, Read, Write};

pub(crate) enum TransportError {
    Io(io::Error),
    Tls(rustls::Error),
}

pub(crate) struct Transport {
    sock: Socket,
    tls: Option<Box<ClientConnection>>,
    /// Plaintext mode: wire bytes the kernel has not taken yet.
    out: Vec<u8>,
    out_pos: usize,
}

/// What one `read` saw besides the bytes it appended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// Nothing more for now.
    Open,
    /// The server closed its side.
    Eof,
}

impl Transport {
    pub fn new(sock: Socket) -> Transport {
        Transport { sock, tls: None, out: Vec::new(), out_pos: 0 }
    }

    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// From now on every byte goes through `conn`. Called with nothing
    /// buffered in either direction (the STARTTLS rule).
    pub fn start_tls(&mut self, mut conn: ClientConnection) {
        // Commands are queued whole before a flush; an unbounded plaintext
        // buffer means `queue` never has to report a partial write.
        conn.set_buffer_limit(None);
        self.tls = Some(Box::new(conn));
    }

    pub fn has_unsent(&self) -> bool {
        match &self.tls {
            Some(t) => t.wants_write(),
            None => self.out_pos < self.out.len(),
        }
    }

    /// Queues bytes to send; `flush` writes them.
    pub fn queue(&mut self, data: &[u8]) {
        match &mut self.tls {
            // Cannot fail: the buffer limit was lifted in `start_tls`.
            Some(t) => {
                let _ = t.writer().write_all(data);
            }
            None => {
                if self.out_pos == self.out.len() {
                    self.out.clear();
                    self.out_pos = 0;
                }
                self.out.extend_from_slice(data);
            }
        }
    }

    /// Writes what is queued until done or the kernel's buffer is full.
    /// Returns whether anything was written.
    pub fn flush(&mut self) -> Result<bool, TransportError> {
        let mut progressed = false;
        match &mut self.tls {
            Some(t) => {
                while t.wants_write() {
                    match t.write_tls(&mut SockIo(&self.sock)) {
                        Ok(n) => progressed |= n > 0,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(TransportError::Io(e)),
                    }
                }
            }
            None => {
                while self.out_pos < self.out.len() {
                    match (&self.sock).write(&self.out[self.out_pos..]) {
                        Ok(n) => {
                            self.out_pos += n;
                            progressed |= n > 0;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(TransportError::Io(e)),
                    }
                }
            }
        }
        Ok(progressed)
    }

    /// Reads everything available, appending plaintext to `into`.
    ///
    /// `hangup`: the edge reported the peer's shutdown too. Without it, a
    /// plaintext read that does not fill the buffer has emptied the
    /// socket — more data would raise a new edge — so the extra read that
    /// would only say `WouldBlock` is skipped (the rule `net::socket`
    /// follows, one system call per reply saved).
    pub fn read(&mut self, into: &mut Vec<u8>, hangup: bool) -> Result<ReadEnd, TransportError> {
        let mut buf = [0u8; 16 * 1024];
        match &mut self.tls {
            None => loop {
                match (&self.sock).read(&mut buf) {
                    Ok(0) => return Ok(ReadEnd::Eof),
                    Ok(n) if n < buf.len() && !hangup => {
                        into.extend_from_slice(&buf[..n]);
                        return Ok(ReadEnd::Open);
                    }
                    Ok(n) => into.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::Open),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(TransportError::Io(e)),
                }
            },
            Some(t) => loop {
                let eof = match t.read_tls(&mut SockIo(&self.sock)) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::Open),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(TransportError::Io(e)),
                };
                t.process_new_packets().map_err(TransportError::Tls)?;
                // Drain the plaintext each round so rustls' buffer never fills.
                loop {
                    match t.reader().read(&mut buf) {
                        Ok(0) => return Ok(ReadEnd::Eof), // close_notify
                        Ok(n) => into.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => return Ok(ReadEnd::Eof), // closed without close_notify
                    }
                }
                if eof {
                    return Ok(ReadEnd::Eof);
                }
            },
        }
    }
}

/// `Read`/`Write` for rustls on a shared socket reference.
struct SockIo<'a>(&'a Socket);

impl Read for SockIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SockIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
