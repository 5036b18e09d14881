"""Servers and a client harness for the SMTP tests (test_smtp_*.py).

- `smtp_server(...)`: a real SMTP server (aiosmtpd) on 127.0.0.1, port 0,
  recording every command it dispatched (with the peer and whether the
  connection was under TLS at that moment), every message it accepted, and
  every QUIT. Recipients starting with "reject" get 550 5.1.1.
- `ScriptedServer(script)`: one connection to a plain socket, handed to a
  Python function on a thread — for what a real server would never do.
- `Client`: an asock SMTP client whose SendCompleted results land in a
  queue; `Trace`: the "smtp" trace lines while it is entered; `mail(...)`:
  a MailMessage handle.

Everything waits at most `WAIT` seconds; nothing sleeps to synchronise.
"""

import base64
import ctypes
import json
import queue
import socket
import ssl
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

import asock

WAIT = 10.0
USER = "alice"
PASSWORD = "pa55-Wörd_s3cret"
TOKEN = "ya29.test-oauth-token-0123456789"

# CFUNCTYPE objects handed to the library: never collected, since a late
# callback (a send completed by free, a trace record) may still use them.
_KEEP = []


# --- certificates ----------------------------------------------------------------
class Pki:
    """A test CA, a certificate for localhost + 127.0.0.1, one for localhost
    only, and the CA's PEM file for asock_smtp_client_add_trusted_ca_file."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="asock-smtp-pki-")
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.localhost_only = self.ca.issue_cert("localhost")
        self.ca_file = str(Path(self._dir.name) / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self, localhost_only=False):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (self.localhost_only if localhost_only else self.cert).configure_cert(ctx)
        return ctx


_pki = None


def pki():
    global _pki
    if _pki is None:
        _pki = Pki()
    return _pki


# --- aiosmtpd --------------------------------------------------------------------
def _tls_of(server):
    t = server.transport
    return t is not None and t.get_extra_info("ssl_object") is not None


class Recorder:
    """What one aiosmtpd server saw. Thread-safe; `wait_for` is bounded."""

    def __init__(self):
        self._cv = threading.Condition()
        self.commands = []  # (peer, VERB, arg, tls)
        self.messages = []  # dicts: mail_from, rcpt_tos, data, tls, session_ssl
        self.auths = []  # (mechanism, login, accepted)
        self.quits = []  # peers that said QUIT
        self.closed = []  # peers whose connection ended (either side)

    def add(self, attr, item):
        with self._cv:
            getattr(self, attr).append(item)
            self._cv.notify_all()

    def wait_for(self, predicate, timeout=WAIT):
        with self._cv:
            ok = self._cv.wait_for(lambda: predicate(self), timeout)
        assert ok, f"the server did not see it within {timeout} s: {self.snapshot()}"

    def snapshot(self):
        with self._cv:
            return {"commands": [(p, v, t) for (p, v, _, t) in self.commands], "messages": len(self.messages),
                    "quits": list(self.quits)}

    def verbs(self):
        with self._cv:
            return [v for (_, v, _, _) in self.commands]

    def connections(self):
        """Distinct client connections that said EHLO or HELO (the peer's
        address and port; STARTTLS keeps them)."""
        with self._cv:
            return len({p for (p, v, _, _) in self.commands if v in ("EHLO", "HELO")})


class Handler:
    """Captures messages; rejects recipients starting with "reject"."""

    def __init__(self, rec):
        self.rec = rec

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        n = len(self.rec.messages) + 1
        self.rec.add("messages", {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                                  "data": bytes(envelope.original_content), "tls": _tls_of(server),
                                  "session_ssl": session.ssl is not None})
        return f"250 2.0.0 Ok: queued as Q{n}"

    async def handle_QUIT(self, server, session, envelope):
        self.rec.add("quits", session.peer)
        return "221 2.0.0 Bye"


class OAuthHandler(Handler):
    """Handler plus AUTH XOAUTH2 (aiosmtpd finds `auth_<MECH>` on the
    handler): accepts USER with TOKEN; anything else gets the Gmail-style
    334 error challenge, then 535."""

    async def auth_XOAUTH2(self, server, args):
        if len(args) == 2:
            blob = base64.b64decode(args[1])
        else:
            blob = await server.challenge_auth("", encode_to_b64=False)
        fields = dict(kv.split("=", 1) for kv in blob.decode().split("\x01") if "=" in kv)
        ok = fields.get("user") == USER and fields.get("auth") == f"Bearer {TOKEN}"
        self.rec.add("auths", ("XOAUTH2", fields.get("user"), ok))
        if ok:
            return AuthResult(success=True, auth_data=fields["user"])
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"})
        await server.challenge_auth(error)  # the client answers with an empty line
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")


class _Controller(Controller):
    def __init__(self, handler, rec, **kw):
        super().__init__(handler, hostname="127.0.0.1", port=0, server_hostname="mx.test", ready_timeout=WAIT, **kw)
        self.rec = rec

    def factory(self):
        server = super().factory()
        rec = self.rec

        def recorded(verb, method):
            async def run(arg):
                rec.add("commands", (server.session.peer, verb, arg, _tls_of(server)))
                return await method(arg)
            return run

        server._smtp_methods = {v: recorded(v, m) for v, m in server._smtp_methods.items()}
        lost = server.connection_lost

        def connection_lost(error):
            peer = server.session.peer if server.session else None
            lost(error)
            rec.add("closed", peer)

        server.connection_lost = connection_lost
        return server

    def _trigger_server(self):
        # aiosmtpd cannot use port 0 as is: learn the port before its probe.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def _authenticator(rec):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
              and auth_data.password == PASSWORD.encode())
        login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else None
        rec.add("auths", (mechanism, login, ok))
        return AuthResult(success=ok, handled=False)
    return check


class Server:
    def __init__(self, ctl, rec):
        self.ctl = ctl
        self.rec = rec
        self.port = ctl.port


@contextmanager
def smtp_server(starttls=False, implicit_tls=False, require_starttls=False, auth=False, auth_require_tls=True,
                auth_exclude=None, oauth=False, localhost_only_cert=False, idle_timeout=None):
    """An aiosmtpd server on 127.0.0.1. `starttls`: offers STARTTLS;
    `implicit_tls`: TLS from the first byte; `auth`: PLAIN and LOGIN for
    USER/PASSWORD (only after TLS unless `auth_require_tls` is false);
    `oauth`: XOAUTH2 for USER/TOKEN as well; `idle_timeout`: seconds after
    which the server drops a silent connection (aiosmtpd's default: 300)."""
    rec = Recorder()
    kw = {}
    if idle_timeout is not None:
        kw["timeout"] = idle_timeout
    if starttls:
        kw["tls_context"] = pki().server_context(localhost_only_cert)
        kw["require_starttls"] = require_starttls
    if implicit_tls:
        kw["ssl_context"] = pki().server_context(localhost_only_cert)
    if auth or oauth:
        kw["authenticator"] = _authenticator(rec)
        kw["auth_require_tls"] = auth_require_tls
    if auth_exclude:
        kw["auth_exclude_mechanism"] = list(auth_exclude)
    ctl = _Controller(OAuthHandler(rec) if oauth else Handler(rec), rec, **kw)
    ctl.start()
    try:
        yield Server(ctl, rec)
    finally:
        ctl.stop()


# --- a scripted fake server ------------------------------------------------------
class Peer:
    """The server's side of the one connection, for a script."""

    def __init__(self, conn):
        self.conn = conn
        self.buf = b""
        self.index = 0
        self.lines = []  # every line the client sent, as text

    def send(self, data):
        self.conn.sendall(data)

    def _recv(self):
        try:
            return self.conn.recv(65536)
        except ConnectionResetError:  # a client closing with unread replies resets: the end, too
            return b""

    def line(self):
        """The client's next line (without CRLF), or None at EOF."""
        while b"\r\n" not in self.buf:
            chunk = self._recv()
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        text = line.decode("utf-8", "replace")
        self.lines.append(text)
        return text

    def some(self):
        """Whatever the client sends next (at least one byte), or b"" at EOF."""
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        return self._recv()

    def until_eof(self):
        """Everything else the client sends, until it closes."""
        data, self.buf = self.buf, b""
        while True:
            chunk = self._recv()
            if not chunk:
                return data
            data += chunk

    def until(self, marker):
        while marker not in self.buf:
            chunk = self._recv()
            if not chunk:
                raise EOFError(f"EOF before {marker!r}")
            self.buf += chunk
        i = self.buf.index(marker) + len(marker)
        data, self.buf = self.buf[:i], self.buf[i:]
        return data


class ScriptedServer:
    """Listens on 127.0.0.1:0, accepts `connections` connections one after
    the other and runs `script(peer)` for each on a thread (`peer.index`
    tells which); every socket wait is bounded by WAIT. `join()` returns
    what the script returned (a list when `connections` > 1) and re-raises
    what it raised."""

    def __init__(self, script, connections=1):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.connections = connections
        self.peers = []
        self.results = []
        self.error = None
        self.accepted = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def peer(self):
        return self.peers[0] if self.peers else None

    def _run(self):
        try:
            for index in range(self.connections):
                conn, _ = self.listener.accept()
                self.accepted.set()
                with conn:
                    conn.settimeout(WAIT)
                    peer = Peer(conn)
                    peer.index = index
                    self.peers.append(peer)
                    self.results.append(self.script(peer))
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            self.listener.close()

    def wait_accepted(self):
        assert self.accepted.wait(WAIT), "the client did not connect"

    def join(self):
        self.thread.join(WAIT + 2)
        assert not self.thread.is_alive(), "the scripted server did not finish"
        if self.error is not None:
            raise self.error
        return self.results[0] if self.connections == 1 else self.results

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:  # wakes a thread blocked in accept(); close alone does not
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(WAIT + 2)


# --- the client side ---------------------------------------------------------------
def _check(code, what):
    assert code == asock.OK, f"{what}: {asock.error_name(code)} ({code}): {asock.last_message()}"


@contextmanager
def mail(from_addr="alice@example.com", from_name=None, to=("bob@example.com",), cc=(), bcc=(),
         subject="Hello", body="Hello from asock\n", attachments=()):
    """A MailMessage handle; `to`, `cc`, `bcc`: addresses or (address, name)."""
    m = asock.MailMessage()
    _check(asock.asock_mail_message_new(ctypes.byref(m)), "mail_message_new")
    keep = []
    try:
        _check(asock.asock_mail_message_set_from(m, from_addr.encode(), from_name.encode() if from_name else None),
               "set_from")
        for fn, items in ((asock.asock_mail_message_add_to, to), (asock.asock_mail_message_add_cc, cc),
                          (asock.asock_mail_message_add_bcc, bcc)):
            for item in items:
                addr, name = item if isinstance(item, tuple) else (item, None)
                _check(fn(m, addr.encode(), name.encode() if name else None), f"add {addr}")
        if subject is not None:
            _check(asock.asock_mail_message_set_subject(m, subject.encode()), "set_subject")
        if body is not None:
            _check(asock.asock_mail_message_set_body(m, body.encode(), False), "set_body")
        for name, media_type, data in attachments:
            blob = ctypes.create_string_buffer(data, len(data))
            keep.append(blob)
            _check(asock.asock_mail_message_add_attachment(m, name.encode(), media_type.encode(), blob, len(data)),
                   "add_attachment")
        yield m
    finally:
        assert asock.asock_mail_message_free(m) == asock.OK


class Client:
    """An asock SMTP client on the default loop; SendCompleted results
    (as `asock.completed_args` dicts) go to `self.results`. Its timeout
    (5 s) is below WAIT, so a stalled send reports E_SMTP_TIMEOUT rather
    than leaving `wait` to give up."""

    def __init__(self, port, host="127.0.0.1", timeout_ms=5000, loop=asock.DEFAULT_LOOP, **settings):
        self.h = asock.SmtpClient()
        self.loop = loop
        _check(asock.asock_smtp_client_new(loop, ctypes.byref(self.h)), "smtp_client_new")
        self.results = queue.Queue()
        self._cb = asock.SEND_COMPLETED_CB(self._completed)
        _KEEP.append(self._cb)
        self.freed = False
        _check(asock.asock_smtp_client_set_send_completed(self.h, self._cb), "set_send_completed")
        _check(asock.asock_smtp_client_set_host(self.h, host.encode()), "set_host")
        _check(asock.asock_smtp_client_set_port(self.h, port), "set_port")
        _check(asock.asock_smtp_client_set_timeout(self.h, timeout_ms), "set_timeout")
        self.configure(**settings)

    def _completed(self, client, e):
        try:
            self.results.put(asock.completed_args(e))
        except BaseException as ex:  # never lose a completion to a decoding bug
            self.results.put({"exception": repr(ex)})

    def configure(self, security=None, enable_ssl=None, ca=False, credentials=None, oauth2=None,
                  allow_plaintext_auth=None, idle_timeout_ms=None, policy=None, client_domain=None):
        h = self.h
        if security is not None:
            _check(asock.asock_smtp_client_set_security(h, security), "set_security")
        if enable_ssl is not None:
            _check(asock.asock_smtp_client_set_enable_ssl(h, enable_ssl), "set_enable_ssl")
        if ca:
            _check(asock.asock_smtp_client_add_trusted_ca_file(h, pki().ca_file.encode()), "add_trusted_ca_file")
        if credentials is not None:
            _check(asock.asock_smtp_client_set_credentials(h, credentials[0].encode(), credentials[1].encode()),
                   "set_credentials")
        if oauth2 is not None:
            _check(asock.asock_smtp_client_set_oauth2_token(h, oauth2[0].encode(), oauth2[1].encode()),
                   "set_oauth2_token")
        if allow_plaintext_auth is not None:
            _check(asock.asock_smtp_client_set_allow_plaintext_auth(h, allow_plaintext_auth),
                   "set_allow_plaintext_auth")
        if idle_timeout_ms is not None:
            _check(asock.asock_smtp_client_set_idle_timeout(h, idle_timeout_ms), "set_idle_timeout")
        if policy is not None:
            _check(asock.asock_smtp_client_set_recipient_policy(h, policy), "set_recipient_policy")
        if client_domain is not None:
            _check(asock.asock_smtp_client_set_client_domain(h, client_domain.encode()), "set_client_domain")

    def send_async(self, m, token=None):
        return asock.asock_smtp_client_send_async(self.h, m, token)

    def wait(self, timeout=WAIT):
        try:
            r = self.results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"SendCompleted did not run within {timeout} s") from None
        assert "exception" not in r, r
        return r

    def drive(self, timeout=WAIT):
        """For a client on a loop nobody runs: runs its turns on this thread
        until a send completes, and returns the result."""
        deadline = time.monotonic() + timeout
        while self.results.empty():
            assert time.monotonic() < deadline, f"SendCompleted did not run within {timeout} s"
            _check(asock.asock_loop_run_once(self.loop, 100, None), "loop_run_once")
        return self.wait(0)

    def send_and_wait(self, m, token=None):
        _check(self.send_async(m, token), "send_async")
        return self.wait()

    def send(self, m):
        """The blocking send: (code, asock_last_message())."""
        code = asock.asock_smtp_client_send(self.h, m)
        return code, asock.last_message()

    def cancel(self):
        _check(asock.asock_smtp_client_send_async_cancel(self.h), "send_async_cancel")

    def free(self):
        if not self.freed:
            self.freed = True
            _check(asock.asock_smtp_client_free(self.h), "smtp_client_free")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()


class Trace:
    """Collects the "smtp" trace records (level INFO) while entered."""

    def __init__(self):
        self._lock = threading.Lock()
        self._records = []
        self._cb = asock.TRACE_CB(self._on)
        _KEEP.append(self._cb)

    def _on(self, level, category, text, userdata):
        with self._lock:
            self._records.append((category.decode(), text.decode("utf-8", "replace")))

    def __enter__(self):
        _check(asock.asock_set_trace(self._cb, asock.TRACE_INFO, None), "set_trace")
        return self

    def __exit__(self, *exc):
        _check(asock.asock_set_trace(asock.TRACE_CB(), asock.TRACE_OFF, None), "trace off")

    def all_text(self):
        with self._lock:
            return [t for (_, t) in self._records]

    def lines(self):
        """The smtp category's records."""
        with self._lock:
            return [t for (c, t) in self._records if c == "smtp"]

    def commands(self):
        """What the client sent, as traced: the text after "C: "."""
        return [t[3:] for t in self.lines() if t.startswith("C: ")]
