//! The Redis connection the services use where Redis is an optimisation or
//! a side channel: made on first use, so a Redis that is down at start-up
//! is not an error, and failing fast (half a second) while it is down.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub fn lazy(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}
