//! Opening a Redis client from the configuration: plain `redis://` or TLS
//! (`rediss://`), with an optional CA certificate (`tls_ca_file`) and client
//! certificate (`tls_cert_file`, `tls_key_file`). Without a CA file a TLS
//! connection trusts the system's roots.

use redis::{Client, ClientTlsConfig, ErrorKind, RedisError, TlsCertificates};

use crate::config::Config;

/// A client for `config.redis_url`. Opening does not connect yet.
pub fn client(config: &Config) -> Result<Client, RedisError> {
    let url = config.redis_url.as_str();
    let custom_tls = !config.tls_ca_file.is_empty() || !config.tls_cert_file.is_empty();
    if !url.starts_with("rediss://") || !custom_tls {
        return Client::open(url);
    }
    let read = |what: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| {
            RedisError::from((ErrorKind::InvalidClientConfig, what, format!("{path}: {e}")))
        })
    };
    let root_cert = if config.tls_ca_file.is_empty() {
        None
    } else {
        Some(read("cannot read tls_ca_file", &config.tls_ca_file)?)
    };
    let client_tls = if config.tls_cert_file.is_empty() {
        None
    } else {
        Some(ClientTlsConfig {
            client_cert: read("cannot read tls_cert_file", &config.tls_cert_file)?,
            client_key: read("cannot read tls_key_file", &config.tls_key_file)?,
        })
    };
    Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
}
