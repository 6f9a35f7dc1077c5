//! Test support shared by the API tests (`tests/api`) and the benchmark
//! (`benches/throughput.rs`), one module per concern. Each includes it with
//! `#[path = ".../tests/common/mod.rs"] mod common;`, so some items go unused in one of them.
#![allow(dead_code)]

pub mod files;
pub mod nginx;

/// A free loopback port (for a process that binds it itself), never handed out twice by one
/// process. Taken below Linux's ephemeral range (32768 up), so the kernel never gives it to
/// another `bind(0)` either: a server killed and started again on its port (the restart
/// tests) cannot lose it to a test that asked for a port meanwhile (with `bind(0)`, two
/// concurrent tests once got the same port and each reached the other's server).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Where this process starts in the span: apart from another test binary run beside it.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}
