//! The Begin/End hot path allocates nothing per operation once warm: async
//! results come from a pool, queues and the loop's job buffers keep their
//! capacity. Measured through the C ABI with a counting global allocator
//! over every thread (the loop thread's deliveries included).

use asock::ffi::apm::*;
use asock::ffi::endpoint::{asock_endpoint_init, ASOCK_AF_INET};
use asock::ffi::event_loop::*;
use asock::ffi::socket::*;
use asock::ffi::types::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static CALLBACKS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn counted(_ar: asock_async_result, _state: *mut c_void) {
    CALLBACKS.fetch_add(1, Ordering::Relaxed);
}

fn ok(code: i32) {
    assert_eq!(code, 0, "{}", asock::error::name(code).to_string_lossy());
}

/// One echo: client sends, server receives and sends back, client receives.
/// Every operation has a callback (so the loop delivers it) and is ended
/// from this thread.
fn round_trip(client: asock_socket, server: asock_socket, msg: &[u8], sbuf: &mut [u8], cbuf: &mut [u8]) {
    let mut ar = asock_async_result { id: 0 };
    let mut err = 0;
    let none = std::ptr::null_mut();
    ok(asock_begin_receive(server, sbuf.as_mut_ptr(), sbuf.len(), 0, Some(counted), none, &mut ar));
    let recv = ar;
    ok(asock_begin_send(client, msg.as_ptr(), msg.len(), 0, Some(counted), none, &mut ar));
    assert_eq!(asock_end_send(ar, &mut err), msg.len() as i32);
    let n = asock_end_receive(recv, &mut err);
    assert_eq!(n, msg.len() as i32);
    ok(asock_begin_receive(client, cbuf.as_mut_ptr(), cbuf.len(), 0, Some(counted), none, &mut ar));
    let recv = ar;
    ok(asock_begin_send(server, sbuf.as_ptr(), n as usize, 0, Some(counted), none, &mut ar));
    assert_eq!(asock_end_send(ar, &mut err), n);
    assert_eq!(asock_end_receive(recv, &mut err), n);
}

#[test]
fn begin_end_round_trips_allocate_nothing_once_warm() {
    let mut lp = asock_loop { id: 0 };
    ok(asock_loop_new(&mut lp));
    ok(asock_loop_start_thread(lp));
    let (mut listener, mut client, mut server) =
        (asock_socket { id: 0 }, asock_socket { id: 0 }, asock_socket { id: 0 });
    let mut ep = asock_endpoint::default();
    ok(asock_socket_new(lp, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &mut listener));
    ok(asock_endpoint_init(ASOCK_AF_INET, true, 0, &mut ep));
    ok(asock_socket_bind(listener, &ep));
    ok(asock_socket_listen(listener, 4));
    ok(asock_socket_local_endpoint(listener, &mut ep));
    ok(asock_socket_new(lp, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &mut client));
    let (mut a, mut c) = (asock_async_result { id: 0 }, asock_async_result { id: 0 });
    ok(asock_begin_accept(listener, None, std::ptr::null_mut(), &mut a));
    ok(asock_begin_connect(client, &ep, None, std::ptr::null_mut(), &mut c));
    ok(asock_end_connect(c));
    ok(asock_end_accept(a, &mut server));

    let msg = b"PING\n";
    let (mut sbuf, mut cbuf) = ([0u8; 64], [0u8; 64]);
    for _ in 0..200 {
        round_trip(client, server, msg, &mut sbuf, &mut cbuf);
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    const N: usize = 2000;
    for _ in 0..N {
        round_trip(client, server, msg, &mut sbuf, &mut cbuf);
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    eprintln!("{allocations} allocations in {N} round trips");
    // 4 operations per round trip: 8,000 operations. A handful of
    // allocations may come from a buffer growing once; one per operation
    // (or per round trip) would be thousands.
    assert!(allocations < 50, "{allocations} allocations for {} operations", N * 4);

    ok(asock_socket_close(client));
    ok(asock_socket_close(server));
    ok(asock_socket_close(listener));
    ok(asock_loop_free(lp));
    // Freeing the loop ran every callback still queued: exactly one each.
    assert_eq!(CALLBACKS.load(Ordering::SeqCst), (200 + N) * 4);
}
