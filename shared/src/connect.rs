//! Where Redis is, from `redis_url`, and how to open clients for it.
//!
//! Three deployments:
//! - one server: `redis://[user:password@]host:port[/db]` (`rediss://` for TLS);
//! - Sentinel: `redis+sentinel://[user:password@]s1:p1,s2:p2,.../<master>[/db]`,
//!   the sentinels to ask and the name of the master they watch; the
//!   credentials and TLS (`rediss+sentinel://`) are the data nodes';
//! - Cluster: `redis+cluster://[user:password@]h1:p1,h2:p2,...`, seed nodes
//!   (`rediss+cluster://` for TLS).
//!
//! TLS takes an optional CA certificate (`tls_ca_file`) and client
//! certificate (`tls_cert_file`, `tls_key_file`); without a CA file a TLS
//! connection trusts the system's roots.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{Client, ClientTlsConfig, ErrorKind, RedisError, TlsCertificates};

use crate::config::Config;

/// A Redis deployment, parsed from `redis_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server (or a proxy in front of several).
    Single { url: String },
    /// A master watched by Sentinel; the sentinels say where it is.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        tls: bool,
        /// `user:password`, as written in the URL (may be empty).
        userinfo: String,
        db: i64,
    },
    /// A Redis Cluster, found from its seed nodes.
    Cluster {
        nodes: Vec<(String, u16)>,
        tls: bool,
        userinfo: String,
    },
}

impl Target {
    /// Parses a `redis_url`. Errors say what is wrong, without the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(
                "must start with redis://, rediss://, redis+sentinel:// or redis+cluster://".into(),
            );
        };
        let (tls, kind) = match scheme {
            "redis" | "rediss" | "redis+unix" | "unix" => {
                return Ok(Target::Single {
                    url: url.to_owned(),
                });
            }
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            other => return Err(format!("unknown scheme {other}://")),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (userinfo.to_owned(), hosts),
            None => (String::new(), authority),
        };
        let nodes = hosts
            .split(',')
            .map(|node| {
                let (host, port) = node
                    .rsplit_once(':')
                    .ok_or_else(|| format!("node {node:?} must be host:port"))?;
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("node {node:?} has a bad port"))?;
                if host.is_empty() {
                    return Err(format!("node {node:?} has no host"));
                }
                Ok((host.to_owned(), port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if kind == "cluster" {
            if !path.is_empty() {
                return Err("a cluster URL takes no path: Redis Cluster has only db 0".into());
            }
            return Ok(Target::Cluster {
                nodes,
                tls,
                userinfo,
            });
        }
        let (master, db) = path.split_once('/').unwrap_or((path, ""));
        if master.is_empty() {
            return Err("a sentinel URL ends with /<master name>".into());
        }
        let db = if db.is_empty() {
            0
        } else {
            db.parse::<i64>()
                .map_err(|_| format!("bad database number {db:?}"))?
        };
        Ok(Target::Sentinel {
            sentinels: nodes,
            master: master.to_owned(),
            tls,
            userinfo,
            db,
        })
    }

    /// The deployment's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Single { .. } => "single",
            Target::Sentinel { .. } => "sentinel",
            Target::Cluster { .. } => "cluster",
        }
    }
}

fn config_error(what: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, what, detail))
}

/// The TLS certificates the configuration names, if any.
fn certificates(config: &Config) -> Result<Option<TlsCertificates>, RedisError> {
    // rustls picks its process-wide provider itself only when one crypto
    // backend is built in; `object_store`'s S3 client (the blob store)
    // brings aws-lc-rs beside our ring, so name ring before redis-rs
    // builds a TLS configuration (an error means one is set already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if config.tls_ca_file.is_empty() && config.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let read = |what: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| config_error(what, format!("{path}: {e}")))
    };
    let root_cert = if config.tls_ca_file.is_empty() {
        None
    } else {
        Some(read("cannot read tls_ca_file", &config.tls_ca_file)?)
    };
    let client_tls = if config.tls_cert_file.is_empty() {
        None
    } else {
        let client_cert = read("cannot read tls_cert_file", &config.tls_cert_file)?;
        let client_key = read("cannot read tls_key_file", &config.tls_key_file)?;
        check_client_certificate(config, &client_cert, &client_key)?;
        Some(ClientTlsConfig {
            client_cert,
            client_key,
        })
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Checks the client certificate and key as rustls will when it connects,
/// so that a certificate it refuses is named here. Without this, an X.509 v1
/// certificate (which `openssl x509 -req` makes when given no extensions)
/// fails at the first connection as "invalid peer certificate:
/// UnsupportedCertVersion", naming neither the file nor the client side.
fn check_client_certificate(config: &Config, cert: &[u8], key: &[u8]) -> Result<(), RedisError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_path = &config.tls_cert_file;
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("bad tls_cert_file", format!("{cert_path}: {e}")))?;
    if chain.is_empty() {
        return Err(config_error(
            "bad tls_cert_file",
            format!("{cert_path}: no PEM certificate in it"),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| config_error("bad tls_key_file", format!("{}: {e}", config.tls_key_file)))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        let hint = match e {
            rustls::Error::InvalidCertificate(_) => {
                " (the client certificate must be X.509 v3: sign it with extensions, e.g. \
                 `openssl x509 -req ... -extfile <(printf 'basicConstraints=CA:FALSE')`)"
            }
            _ => "",
        };
        config_error(
            "bad tls_cert_file",
            format!("{cert_path} with key {}: {e}{hint}", config.tls_key_file),
        )
    })?;
    Ok(())
}

/// The URL of one data node: `redis[s]://[userinfo@]host:port`.
pub(crate) fn node_url(tls: bool, userinfo: &str, address: &str) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    let at = if userinfo.is_empty() { "" } else { "@" };
    format!("{scheme}://{userinfo}{at}{address}")
}

/// A client for one server's URL, with the configuration's certificates.
pub(crate) fn client_for_url(config: &Config, url: &str) -> Result<Client, RedisError> {
    match certificates(config)? {
        Some(certs) if url.starts_with("rediss://") => Client::build_with_tls(url, certs),
        _ => Client::open(url),
    }
}

/// A client for a single-server `redis_url`. Opening does not connect yet.
/// For Sentinel and Cluster URLs use [`Target`] with [`master_client`] or
/// [`cluster_client`].
pub fn client(config: &Config) -> Result<Client, RedisError> {
    match Target::parse(&config.redis_url) {
        Ok(Target::Single { url }) => client_for_url(config, &url),
        Ok(other) => Err(config_error(
            "not a single-server URL",
            format!("redis_url is a {} URL", other.kind()),
        )),
        Err(detail) => Err(config_error("bad redis_url", detail)),
    }
}

/// A client for a Redis Cluster.
pub fn cluster_client(
    config: &Config,
    nodes: &[(String, u16)],
    tls: bool,
    userinfo: &str,
) -> Result<ClusterClient, RedisError> {
    let urls: Vec<String> = nodes
        .iter()
        .map(|(host, port)| node_url(tls, userinfo, &host_port(host, *port)))
        .collect();
    // redis-rs follows MOVED and ASK itself and waits out TRYAGAIN a few
    // times, by default at least 1.28 s each time: far longer than a slot
    // stays unsettled in a failover or a resharding. Short waits, and the
    // link's own retries after them (`store::link::run_cluster`), let
    // work resume within a fifth of a second of the slot settling.
    let mut builder = ClusterClientBuilder::new(urls)
        .connection_timeout(config.connect_timeout())
        .response_timeout(config.redis_timeout())
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200)
        .retry_wait_formula(10, 2);
    if tls && let Some(certs) = certificates(config)? {
        builder = builder.certs(certs);
    }
    builder.build()
}

/// Asks the sentinels, in turn, where the master named `master` is, and
/// returns a client for it once the node itself says it is a master
/// (`ROLE`): a sentinel that has not caught up with a failover names the
/// demoted node. A sentinel that cannot be reached, does not know the
/// master, or names a node that is not one, is passed over; the error
/// names the last failure.
pub async fn master_client(
    config: &Config,
    sentinels: &[(String, u16)],
    master: &str,
    tls: bool,
    userinfo: &str,
    db: i64,
) -> Result<(Client, String), RedisError> {
    let mut last = config_error("no sentinel", "redis_url names no sentinel".into());
    for (host, port) in sentinels {
        match ask_sentinel(config, host, *port, master).await {
            Ok((master_host, master_port)) => {
                let address = host_port(&master_host, master_port);
                let url = format!("{}/{db}", node_url(tls, userinfo, &address));
                let client = client_for_url(config, &url)?;
                match is_master(config, &client).await {
                    Ok(true) => return Ok((client, address)),
                    Ok(false) => {
                        tracing::debug!(sentinel = %format!("{host}:{port}"), node = %address, "named a node that is not a master");
                        last = RedisError::from((
                            ErrorKind::Io,
                            "not a master",
                            format!("{address}, named by sentinel {host}:{port}, is not a master"),
                        ));
                    }
                    Err(err) => last = err,
                }
            }
            Err(err) => {
                tracing::debug!(sentinel = %format!("{host}:{port}"), "sentinel: {err}");
                last = err;
            }
        }
    }
    Err(last)
}

/// A connection for a question or two (to a sentinel, or a node's role),
/// with the connect timeout for both connecting and answering.
async fn short_connection(
    config: &Config,
    client: &Client,
) -> Result<redis::aio::MultiplexedConnection, RedisError> {
    let timeout = config.connect_timeout();
    let conn_config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout.max(Duration::from_millis(500))));
    client
        .get_multiplexed_async_connection_with_config(&conn_config)
        .await
}

/// Whether the node says it is a master (`ROLE`).
async fn is_master(config: &Config, client: &Client) -> Result<bool, RedisError> {
    let mut conn = short_connection(config, client).await?;
    let role: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await?;
    Ok(match role {
        redis::Value::Array(parts) => {
            matches!(
                parts.first(),
                Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
            ) || matches!(parts.first(), Some(redis::Value::SimpleString(s)) if s == "master")
        }
        _ => false,
    })
}

async fn ask_sentinel(
    config: &Config,
    host: &str,
    port: u16,
    master: &str,
) -> Result<(String, u16), RedisError> {
    let password = config.redis_sentinel_password.expose();
    let auth = if password.is_empty() {
        String::new()
    } else {
        format!(":{}@", percent_encode(password))
    };
    let client = Client::open(format!("redis://{auth}{host}:{port}"))?;
    let mut conn = short_connection(config, &client).await?;
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut conn)
        .await?;
    let Some((master_host, master_port)) = addr else {
        return Err(config_error(
            "unknown master",
            format!("sentinel {host}:{port} does not watch a master named {master:?}"),
        ));
    };
    let master_port = master_port.parse::<u16>().map_err(|_| {
        config_error(
            "bad sentinel reply",
            format!("sentinel {host}:{port} gave port {master_port:?}"),
        )
    })?;
    Ok((master_host, master_port))
}

/// `host:port` for a URL, an IPv6 host in brackets (a sentinel names hosts
/// without them).
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `text` for the user-info part of a URL: unreserved characters kept,
/// every other byte as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: an X.509 v1 client certificate failed mTLS at the first
    /// connection with "invalid peer certificate", naming no file.
    #[test]
    fn a_v1_client_certificate_is_refused_by_name() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
        let with = |cert: &str| Config {
            tls_cert_file: format!("{dir}/{cert}"),
            tls_key_file: format!("{dir}/client.key"),
            ..Config::default()
        };
        let v3 = with("client-v3.pem");
        assert!(certificates(&v3).is_ok());
        let v1 = with("client-v1.pem");
        let err = certificates(&v1).expect_err("a v1 certificate").to_string();
        assert!(err.contains("bad tls_cert_file"), "{err}");
        assert!(err.contains("client-v1.pem"), "{err}");
        assert!(err.contains("X.509 v3"), "{err}");
    }

    #[test]
    fn parses_each_deployment() {
        assert_eq!(
            Target::parse("redis://h:1/2"),
            Ok(Target::Single {
                url: "redis://h:1/2".into()
            })
        );
        assert_eq!(
            Target::parse("redis+sentinel://u:pw@s1:26379,s2:26380/mymaster/3"),
            Ok(Target::Sentinel {
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26380)],
                master: "mymaster".into(),
                tls: false,
                userinfo: "u:pw".into(),
                db: 3,
            })
        );
        assert_eq!(
            Target::parse("rediss+cluster://a:7000,b:7001"),
            Ok(Target::Cluster {
                nodes: vec![("a".into(), 7000), ("b".into(), 7001)],
                tls: true,
                userinfo: String::new(),
            })
        );
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "h:1",
            "http://h:1",
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1/m",
            "redis+sentinel://s1:x/m",
            "redis+sentinel://s1:1/m/x",
            "redis+cluster://a:1/0",
            "redis+cluster://:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        assert_eq!(host_port("10.0.0.1", 6379), "10.0.0.1:6379");
        assert_eq!(host_port("::1", 6379), "[::1]:6379");
        assert_eq!(host_port("[::1]", 6379), "[::1]:6379");
        assert_eq!(host_port("redis-0.local", 6379), "redis-0.local:6379");
    }

    #[test]
    fn passwords_are_percent_encoded() {
        assert_eq!(percent_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(percent_encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
    }

    #[test]
    fn single_client_refuses_other_deployments() {
        let config = Config {
            redis_url: "redis+cluster://a:1".into(),
            ..Config::default()
        };
        assert!(client(&config).is_err());
    }
}
