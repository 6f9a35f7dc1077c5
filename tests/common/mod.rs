//! Test support shared by the API tests (`tests/api`) and the benchmark
//! (`benches/throughput.rs`), one module per concern. Each includes it with
//! `#[path = ".../tests/common/mod.rs"] mod common;`, so some items go unused in one of them.
#![allow(dead_code)]

pub mod files;
pub mod nginx;

/// A free loopback port (for a process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
