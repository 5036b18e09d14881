"""The FFI path from Python: load the library, read the version, map error
codes, post to the default loop through a ctypes callback."""

import ctypes
import re
import threading

import asock
import pytest

TIMEOUT = 10


def test_version_is_semver():
    version = asock.asock_version().decode()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert version == "0.1.0"


@pytest.mark.parametrize("code,name", [
    (0, "Success"),
    (10054, "ConnectionReset"),
    (995, "OperationAborted"),
    (11001, "HostNotFound"),
    (-1001, "ArgumentNull"),
    (-1005, "ObjectDisposed"),
    (-1108, "SmtpProtocol"),
    (424242, "Unknown"),
])
def test_error_names(code, name):
    assert asock.error_name(code) == name


def test_errno_maps_like_dotnet():
    import errno
    assert asock.asock_error_from_errno(errno.ECONNRESET) == asock.CONNECTION_RESET
    assert asock.asock_error_from_errno(errno.EPIPE) == 10058  # Shutdown
    assert asock.asock_error_from_errno(errno.EAGAIN) == 10035  # WouldBlock


def test_failure_leaves_a_message_on_this_thread():
    ep = asock.Endpoint()
    rc = asock.asock_endpoint_parse(b"not an endpoint", ctypes.byref(ep))
    assert rc == asock.E_FORMAT
    assert "not an endpoint" in asock.last_message()
    assert asock.asock_endpoint_parse(None, ctypes.byref(ep)) == asock.E_ARGUMENT_NULL


def test_post_to_default_loop_runs_once_on_the_loop_thread():
    done = threading.Event()
    calls = []

    @asock.POST_CB
    def on_post(state):
        calls.append((state, threading.get_ident()))
        done.set()

    asock.check(asock.asock_loop_post(asock.DEFAULT_LOOP, on_post, ctypes.c_void_p(1234)), "post")
    assert done.wait(TIMEOUT), "the default loop did not run the post"
    # Give a duplicate the chance to show: post a second marker and wait for
    # it; tasks run in order, so once it ran, any duplicate of the first had too.
    second = threading.Event()

    @asock.POST_CB
    def marker(state):
        second.set()

    asock.check(asock.asock_loop_post(asock.DEFAULT_LOOP, marker, None), "post")
    assert second.wait(TIMEOUT)
    assert len(calls) == 1
    state, thread = calls[0]
    assert state == 1234
    assert thread != threading.get_ident()


def test_timer_on_own_loop_driven_from_python():
    loop = asock.Loop()
    asock.check(asock.asock_loop_new(ctypes.byref(loop)), "loop_new")
    outcomes = []

    @asock.TIMER_CB
    def on_timer(state, status):
        outcomes.append(status)

    timer = ctypes.c_uint64()
    asock.check(asock.asock_loop_add_timer(loop, 5, on_timer, None, ctypes.byref(timer)), "add_timer")
    dispatched = ctypes.c_uint32()
    for _ in range(200):
        asock.check(asock.asock_loop_run_once(loop, 50, ctypes.byref(dispatched)), "run_once")
        if outcomes:
            break
    assert outcomes == [asock.OK]
    assert asock.asock_loop_cancel_timer(loop, timer.value) == asock.E_INVALID_OPERATION
    asock.check(asock.asock_loop_free(loop), "loop_free")
    assert asock.asock_loop_free(loop) == asock.E_OBJECT_DISPOSED


def test_socket_binds_and_reads_its_port_back():
    s = asock.Socket()
    asock.check(asock.asock_socket_new(asock.DEFAULT_LOOP, asock.AF_INET, asock.SOCK_STREAM,
                                       asock.PROTO_TCP, ctypes.byref(s)), "socket_new")
    try:
        ep = asock.parse_endpoint("127.0.0.1:0")
        asock.check(asock.asock_socket_bind(s, ctypes.byref(ep)), "bind")
        asock.check(asock.asock_socket_listen(s, 16), "listen")
        bound = asock.Endpoint()
        asock.check(asock.asock_socket_local_endpoint(s, ctypes.byref(bound)), "local_endpoint")
        assert bound.port != 0
        assert asock.format_endpoint(bound) == f"127.0.0.1:{bound.port}"
    finally:
        asock.check(asock.asock_socket_close(s), "close")
    assert asock.asock_socket_close(s) == asock.E_OBJECT_DISPOSED


def test_trace_callback_receives_records():
    records = []
    lock = threading.Lock()

    @asock.TRACE_CB
    def on_trace(level, category, text, userdata):
        with lock:
            records.append((level, category.decode(), text.decode()))

    asock.check(asock.asock_set_trace(on_trace, asock.TRACE_INFO, None), "set_trace")
    try:
        s = asock.Socket()
        asock.check(asock.asock_socket_new(asock.DEFAULT_LOOP, asock.AF_INET6, asock.SOCK_DGRAM,
                                           asock.PROTO_UDP, ctypes.byref(s)), "socket_new")
        asock.check(asock.asock_socket_close(s), "close")
    finally:
        asock.check(asock.asock_set_trace(asock.TRACE_CB(), asock.TRACE_OFF, None), "trace off")
    with lock:
        texts = [t for (_, c, t) in records if c == "socket"]
    assert any("created" in t for t in texts), texts
    assert any("closed" in t for t in texts), texts
