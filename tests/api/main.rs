//! Integration tests over real HTTP: one binary, a real server per test.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod auth;
mod bad_input;
mod checks;
mod chunks;
mod cli;
mod console;
mod downloads;
mod hostile;
mod images;
mod integrity;
mod large;
mod metrics;
mod operations;
mod proxy;
mod queue;
mod quotas;
mod remote_ops;
mod replicas;
mod restart;
mod s3;
mod slims;
mod storage_contract;
mod trust;
mod users;
mod zips;
