//! Projector tests, each against its own PostgreSQL database.

mod audit_log;
mod lag;
mod live;
mod poison;
mod redis_behaviours;
mod redis_patterns;
mod relay;
mod replay;
mod security;
mod support;
mod vectors;
