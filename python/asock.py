"""ctypes binding for asock, the .NET/Winsock asynchronous networking model
for C. Thin by design: it mirrors include/asock.h so tests (and users) can
drive the C ABI from Python exactly as a C program would.

The library is found through $ASOCK_LIB (a path to libasock.so), else the
CMake build tree, else the cargo target directory, else the system loader.
"""

import ctypes
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char, c_char_p,
                    c_int32, c_size_t, c_uint8, c_uint16, c_uint32, c_uint64,
                    c_void_p)
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _find_library():
    env = os.environ.get("ASOCK_LIB")
    if env:
        return env
    for candidate in (
        _ROOT / "build" / "cargo" / "release" / "libasock.so",
        _ROOT / "target" / "release" / "libasock.so",
        _ROOT / "target" / "debug" / "libasock.so",
    ):
        if candidate.exists():
            return str(candidate)
    return "libasock.so.0"


lib = ctypes.CDLL(_find_library())

# --- constants (the header's #defines) ---------------------------------------
OK = 0
OPERATION_ABORTED = 995
ADDRESS_ALREADY_IN_USE = 10048
CONNECTION_RESET = 10054
E_ARGUMENT_NULL = -1001
E_ARGUMENT = -1002
E_ARGUMENT_OUT_OF_RANGE = -1003
E_INVALID_OPERATION = -1004
E_OBJECT_DISPOSED = -1005
E_FORMAT = -1007

AF_INET = 2
AF_INET6 = 23
SOCK_STREAM = 1
SOCK_DGRAM = 2
PROTO_UNSPECIFIED = 0
PROTO_TCP = 6
PROTO_UDP = 17
OPT_NO_DELAY = 1
OPT_TTL = 10
TRACE_OFF = 0
TRACE_INFO = 2


# --- types -------------------------------------------------------------------
class Handle(Structure):
    """Every handle kind has this shape: one uint64_t id."""
    _fields_ = [("id", c_uint64)]


class Loop(Handle):
    pass


class Socket(Handle):
    pass


DEFAULT_LOOP = Loop(0)


class Endpoint(Structure):
    _fields_ = [("family", c_int32), ("port", c_uint16), ("addr", c_uint8 * 16),
                ("flowinfo", c_uint32), ("scope_id", c_uint32)]


class AsyncResult(Handle):
    pass


class EventArgs(Handle):
    pass


class EventArgsInfo(Structure):
    _fields_ = [("last_operation", c_int32), ("socket_error", c_int32), ("bytes_transferred", c_int32),
                ("accept_socket", Socket), ("remote_endpoint", Endpoint), ("user_token", c_void_p)]


POST_CB = CFUNCTYPE(None, c_void_p)
ASYNC_CB = CFUNCTYPE(None, AsyncResult, c_void_p)
COMPLETED_CB = CFUNCTYPE(None, Socket, EventArgs, c_void_p)


class MailMessage(Handle):
    pass
TIMER_CB = CFUNCTYPE(None, c_void_p, c_int32)
TRACE_CB = CFUNCTYPE(None, c_int32, c_char_p, c_char_p, c_void_p)


def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


asock_version = _fn("asock_version", c_char_p)
asock_error_name = _fn("asock_error_name", c_char_p, c_int32)
asock_error_message = _fn("asock_error_message", c_size_t, POINTER(c_char), c_size_t)
asock_error_from_errno = _fn("asock_error_from_errno", c_int32, c_int32)
asock_loop_new = _fn("asock_loop_new", c_int32, POINTER(Loop))
asock_loop_run_once = _fn("asock_loop_run_once", c_int32, Loop, c_int32, POINTER(c_uint32))
asock_loop_start_thread = _fn("asock_loop_start_thread", c_int32, Loop)
asock_loop_stop = _fn("asock_loop_stop", c_int32, Loop)
asock_loop_post = _fn("asock_loop_post", c_int32, Loop, POST_CB, c_void_p)
asock_loop_add_timer = _fn("asock_loop_add_timer", c_int32, Loop, c_uint32, TIMER_CB, c_void_p, POINTER(c_uint64))
asock_loop_cancel_timer = _fn("asock_loop_cancel_timer", c_int32, Loop, c_uint64)
asock_loop_free = _fn("asock_loop_free", c_int32, Loop)
asock_endpoint_parse = _fn("asock_endpoint_parse", c_int32, c_char_p, POINTER(Endpoint))
asock_endpoint_format = _fn("asock_endpoint_format", c_size_t, POINTER(Endpoint), POINTER(c_char), c_size_t)
asock_socket_new = _fn("asock_socket_new", c_int32, Loop, c_int32, c_int32, c_int32, POINTER(Socket))
asock_socket_bind = _fn("asock_socket_bind", c_int32, Socket, POINTER(Endpoint))
asock_socket_listen = _fn("asock_socket_listen", c_int32, Socket, c_int32)
asock_socket_local_endpoint = _fn("asock_socket_local_endpoint", c_int32, Socket, POINTER(Endpoint))
asock_socket_set_option = _fn("asock_socket_set_option", c_int32, Socket, c_int32, c_int32)
asock_socket_get_option = _fn("asock_socket_get_option", c_int32, Socket, c_int32, POINTER(c_int32))
asock_socket_close = _fn("asock_socket_close", c_int32, Socket)
asock_set_trace = _fn("asock_set_trace", c_int32, TRACE_CB, c_int32, c_void_p)

# Begin/End (section 5)
_P = POINTER
asock_begin_connect = _fn("asock_begin_connect", c_int32, Socket, _P(Endpoint), ASYNC_CB, c_void_p, _P(AsyncResult))
asock_begin_connect_host = _fn("asock_begin_connect_host", c_int32, Socket, c_char_p, c_uint16, ASYNC_CB, c_void_p,
                               _P(AsyncResult))
asock_end_connect = _fn("asock_end_connect", c_int32, AsyncResult)
asock_begin_accept = _fn("asock_begin_accept", c_int32, Socket, ASYNC_CB, c_void_p, _P(AsyncResult))
asock_end_accept = _fn("asock_end_accept", c_int32, AsyncResult, _P(Socket))
asock_begin_send = _fn("asock_begin_send", c_int32, Socket, c_void_p, c_size_t, c_int32, ASYNC_CB, c_void_p,
                       _P(AsyncResult))
asock_end_send = _fn("asock_end_send", c_int32, AsyncResult, _P(c_int32))
asock_begin_receive = _fn("asock_begin_receive", c_int32, Socket, c_void_p, c_size_t, c_int32, ASYNC_CB, c_void_p,
                          _P(AsyncResult))
asock_end_receive = _fn("asock_end_receive", c_int32, AsyncResult, _P(c_int32))
asock_async_result_is_completed = _fn("asock_async_result_is_completed", c_bool, AsyncResult)
asock_async_result_completed_synchronously = _fn("asock_async_result_completed_synchronously", c_bool, AsyncResult)
asock_async_result_state = _fn("asock_async_result_state", c_void_p, AsyncResult)
asock_async_result_wait = _fn("asock_async_result_wait", c_int32, AsyncResult, c_int32, _P(c_bool))
asock_socket_shutdown = _fn("asock_socket_shutdown", c_int32, Socket, c_int32)

# SocketAsyncEventArgs (section 6)
ACCEPT_ADDRESS_BYTES = 288
OP_ACCEPT = 1
OPT_ACCEPT_RECEIVE_TIMEOUT_MS = 11
asock_event_args_new = _fn("asock_event_args_new", c_int32, _P(EventArgs))
asock_event_args_free = _fn("asock_event_args_free", c_int32, EventArgs)
asock_event_args_set_buffer = _fn("asock_event_args_set_buffer", c_int32, EventArgs, c_void_p, c_int32, c_int32)
asock_event_args_set_completed = _fn("asock_event_args_set_completed", c_int32, EventArgs, COMPLETED_CB)
asock_event_args_set_user_token = _fn("asock_event_args_set_user_token", c_int32, EventArgs, c_void_p)
asock_event_args_get_info = _fn("asock_event_args_get_info", c_int32, EventArgs, _P(EventArgsInfo))
asock_event_args_get_accept_endpoints = _fn("asock_event_args_get_accept_endpoints", c_int32, EventArgs,
                                            _P(Endpoint), _P(Endpoint))
asock_accept_async = _fn("asock_accept_async", c_int32, Socket, EventArgs, _P(c_bool))


# --- Pythonic helpers ----------------------------------------------------------
class AsockError(Exception):
    def __init__(self, code, call):
        self.code = code
        self.name = error_name(code)
        self.detail = last_message()
        super().__init__(f"{call}: {self.name} ({code}): {self.detail}")


def error_name(code):
    return asock_error_name(code).decode()


def last_message():
    n = asock_error_message(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    asock_error_message(buf, n + 1)
    return buf.value.decode()


def check(code, call="asock call"):
    if code != OK:
        raise AsockError(code, call)


def parse_endpoint(text):
    ep = Endpoint()
    check(asock_endpoint_parse(text.encode(), ctypes.byref(ep)), f"parse {text!r}")
    return ep


def format_endpoint(ep):
    n = asock_endpoint_format(ctypes.byref(ep), None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    asock_endpoint_format(ctypes.byref(ep), buf, n + 1)
    return buf.value.decode()

# MailMessage (section 7)
MAIL_PRIORITY_HIGH = 2
asock_mail_message_new = _fn("asock_mail_message_new", c_int32, _P(MailMessage))
asock_mail_message_free = _fn("asock_mail_message_free", c_int32, MailMessage)
for _name in ("set_from", "set_sender", "add_to", "add_cc", "add_bcc", "add_reply_to"):
    globals()["asock_mail_message_" + _name] = _fn("asock_mail_message_" + _name, c_int32, MailMessage, c_char_p,
                                                   c_char_p)
asock_mail_message_set_subject = _fn("asock_mail_message_set_subject", c_int32, MailMessage, c_char_p)
asock_mail_message_set_body = _fn("asock_mail_message_set_body", c_int32, MailMessage, c_char_p, c_bool)
asock_mail_message_add_alternate_view = _fn("asock_mail_message_add_alternate_view", c_int32, MailMessage, c_char_p,
                                            c_char_p)
asock_mail_message_add_attachment = _fn("asock_mail_message_add_attachment", c_int32, MailMessage, c_char_p, c_char_p,
                                        c_void_p, c_size_t)
asock_mail_message_add_header = _fn("asock_mail_message_add_header", c_int32, MailMessage, c_char_p, c_char_p)
asock_mail_message_set_priority = _fn("asock_mail_message_set_priority", c_int32, MailMessage, c_int32)
asock_mail_message_render = _fn("asock_mail_message_render", c_int32, MailMessage, c_void_p, c_size_t, _P(c_size_t))


def render_message(m):
    need = c_size_t()
    check(asock_mail_message_render(m, None, 0, ctypes.byref(need)), "render size")
    buf = ctypes.create_string_buffer(need.value + 512)
    got = c_size_t()
    check(asock_mail_message_render(m, buf, len(buf), ctypes.byref(got)), "render")
    return buf.raw[:got.value]


# SmtpClient (section 7)
E_SMTP = -1100
E_SMTP_CONNECT = -1101
E_SMTP_AUTHENTICATION = -1102
E_SMTP_TIMEOUT = -1103
E_SMTP_STARTTLS_UNAVAILABLE = -1104
E_SMTP_TLS = -1105
E_SMTP_CERTIFICATE = -1106
E_SMTP_FAILED_RECIPIENTS = -1107
E_SMTP_PROTOCOL = -1108
E_IO = -1008
E_NOT_SUPPORTED = -1006
TIMED_OUT = 10060
CONNECTION_REFUSED = 10061
SMTP_SECURITY_AUTO = 0
SMTP_SECURITY_NONE = 1
SMTP_SECURITY_STARTTLS = 2
SMTP_SECURITY_STARTTLS_WHEN_AVAILABLE = 3
SMTP_SECURITY_IMPLICIT_TLS = 4
SMTP_DELIVERY_NETWORK = 0
SMTP_DELIVERY_PICKUP_DIRECTORY = 1
SMTP_RECIPIENTS_ALL_OR_NOTHING = 0
SMTP_RECIPIENTS_DELIVER_TO_ACCEPTED = 1
DSN_ON_SUCCESS = 1
DSN_ON_FAILURE = 2
DSN_DELAY = 4
DSN_NEVER = 0x08000000


class SmtpClient(Structure):
    _fields_ = [("id", c_uint64)]


class FailedRecipient(Structure):
    _fields_ = [("address", c_char_p), ("status_code", c_int32), ("response", c_char_p)]


class SendCompletedArgs(Structure):
    _fields_ = [("error", c_int32), ("status_code", c_int32), ("socket_error", c_int32), ("cancelled", c_bool),
                ("user_token", c_void_p), ("message", c_char_p),
                ("failed_recipients", POINTER(FailedRecipient)), ("failed_recipient_count", c_size_t)]


SEND_COMPLETED_CB = CFUNCTYPE(None, SmtpClient, POINTER(SendCompletedArgs))

asock_mail_message_set_delivery_notification = _fn("asock_mail_message_set_delivery_notification", c_int32,
                                                   MailMessage, c_int32)
asock_smtp_client_new = _fn("asock_smtp_client_new", c_int32, Loop, _P(SmtpClient))
asock_smtp_client_free = _fn("asock_smtp_client_free", c_int32, SmtpClient)
for _name in ("set_host", "set_pickup_directory", "add_trusted_ca_file", "set_client_domain"):
    globals()["asock_smtp_client_" + _name] = _fn("asock_smtp_client_" + _name, c_int32, SmtpClient, c_char_p)
for _name in ("set_port", "set_security", "set_timeout", "set_idle_timeout", "set_delivery_method",
              "set_recipient_policy"):
    globals()["asock_smtp_client_" + _name] = _fn("asock_smtp_client_" + _name, c_int32, SmtpClient, c_int32)
for _name in ("set_enable_ssl", "set_allow_plaintext_auth"):
    globals()["asock_smtp_client_" + _name] = _fn("asock_smtp_client_" + _name, c_int32, SmtpClient, c_bool)
for _name in ("set_credentials", "set_oauth2_token"):
    globals()["asock_smtp_client_" + _name] = _fn("asock_smtp_client_" + _name, c_int32, SmtpClient, c_char_p,
                                                  c_char_p)
asock_smtp_client_set_send_completed = _fn("asock_smtp_client_set_send_completed", c_int32, SmtpClient,
                                           SEND_COMPLETED_CB)
asock_smtp_client_send_async = _fn("asock_smtp_client_send_async", c_int32, SmtpClient, MailMessage, c_void_p)
asock_smtp_client_send_async_cancel = _fn("asock_smtp_client_send_async_cancel", c_int32, SmtpClient)
asock_smtp_client_send = _fn("asock_smtp_client_send", c_int32, SmtpClient, MailMessage)


def completed_args(e):
    """A SendCompleted args pointer as a plain dict (the pointers die with the call)."""
    a = e.contents
    failed = [(a.failed_recipients[i].address.decode(), a.failed_recipients[i].status_code,
               a.failed_recipients[i].response.decode()) for i in range(a.failed_recipient_count)]
    return {"error": a.error, "status_code": a.status_code, "socket_error": a.socket_error,
            "cancelled": a.cancelled, "user_token": a.user_token, "message": a.message.decode(),
            "failed": failed}
