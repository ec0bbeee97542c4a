//! Where an [`EtcdStore`](super::EtcdStore) connects: `etcd://host:port,host:port[/prefix/]`.

/// The key prefix used when the URL names none.
pub const DEFAULT_ETCD_PREFIX: &str = "/nimbus/";

/// The endpoints of one etcd cluster and the key prefix the store keeps its keys under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member; the client fails over between them.
    pub endpoints: Vec<String>,
    /// Every store key is kept under this etcd key prefix, so several Nimbus
    /// installations (or other programs) can share one etcd.
    pub prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EtcdUrlError {
    #[error("store URL {0:?} does not start with etcd://; give e.g. etcd://127.0.0.1:2379,127.0.0.1:22379")]
    NotEtcd(String),
    #[error("store URL {0:?} names no endpoint; give e.g. etcd://127.0.0.1:2379")]
    NoEndpoint(String),
    #[error(
        "endpoint {endpoint:?} in store URL {url:?} is not host:port; give e.g. 127.0.0.1:2379"
    )]
    BadEndpoint { url: String, endpoint: String },
}

impl EtcdConfig {
    /// Parses `etcd://host:port[,host:port...][/prefix/]`. The prefix defaults to
    /// [`DEFAULT_ETCD_PREFIX`] and always ends with `/`.
    pub fn from_url(url: &str) -> Result<Self, EtcdUrlError> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| EtcdUrlError::NotEtcd(url.to_string()))?;
        let (hosts, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for endpoint in hosts.split(',').filter(|e| !e.is_empty()) {
            let port = endpoint.rsplit_once(':');
            match port {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    endpoints.push(endpoint.to_string())
                }
                _ => {
                    return Err(EtcdUrlError::BadEndpoint {
                        url: url.to_string(),
                        endpoint: endpoint.to_string(),
                    })
                }
            }
        }
        if endpoints.is_empty() {
            return Err(EtcdUrlError::NoEndpoint(url.to_string()));
        }
        let prefix = match prefix.trim_end_matches('/') {
            "" => DEFAULT_ETCD_PREFIX.to_string(),
            trimmed => format!("{trimmed}/"),
        };
        Ok(EtcdConfig { endpoints, prefix })
    }

    /// The endpoints as one comma-separated string, for messages.
    pub fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_and_default_prefix() {
        let config = EtcdConfig::from_url("etcd://127.0.0.1:2379,10.0.0.2:22379").unwrap();
        assert_eq!(config.endpoints, ["127.0.0.1:2379", "10.0.0.2:22379"]);
        assert_eq!(config.prefix, "/nimbus/");
    }

    #[test]
    fn parses_a_prefix() {
        let config = EtcdConfig::from_url("etcd://etcd-a:2379/site-bj").unwrap();
        assert_eq!(config.endpoints, ["etcd-a:2379"]);
        assert_eq!(config.prefix, "/site-bj/");
    }

    #[test]
    fn refuses_bad_urls_with_the_value() {
        assert_eq!(
            EtcdConfig::from_url("sqlite://x"),
            Err(EtcdUrlError::NotEtcd("sqlite://x".into()))
        );
        assert_eq!(
            EtcdConfig::from_url("etcd://"),
            Err(EtcdUrlError::NoEndpoint("etcd://".into()))
        );
        let err = EtcdConfig::from_url("etcd://127.0.0.1").unwrap_err();
        assert!(err.to_string().contains("\"127.0.0.1\""), "{err}");
        assert!(EtcdConfig::from_url("etcd://h:99999").is_err());
    }
}
