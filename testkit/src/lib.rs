//! The test kit: what the test suites and `copilot-data bench` share, kept
//! out of the service crates. [`history`] generates synthetic, consistent
//! event histories of a simulated copilot's users; [`stack`] is the one way
//! the tests start the services.

pub mod history;
pub mod stack;
