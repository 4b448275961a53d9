//! TLS for the Redis tier (`rediss://`, cargo feature `redis-tls`): which addresses use it, the CA
//! and client certificate given to the builder, the rustls crypto provider, and how a node
//! found at run time (a Sentinel's master, a Cluster primary) gets the same TLS as the
//! configured addresses. Without the feature it only refuses TLS settings, naming the knob.
//! It never shows a private key, nor the password of a URL it quotes.

use std::fmt;

use redis::cluster::ClusterClientBuilder;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult};

use crate::error::{Error, Result, redact_url};

/// The builder's TLS knobs, PEM as given; checked in `build()`.
#[derive(Clone, Default)]
#[doc(hidden)]
pub struct TlsSettings {
    /// Trust these CA certificates instead of the system's roots.
    pub root_ca: Option<Vec<u8>>,
    /// Client certificate chain and private key, for servers that ask for one (mTLS).
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsSettings {
    fn is_set(&self) -> bool {
        self.root_ca.is_some() || self.client_cert.is_some()
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("root_ca", &self.root_ca.as_ref().map(|_| "<pem>"))
            .field("client_cert", &self.client_cert.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Whether `addr` asks for TLS (`rediss://`, or `valkeys://`).
pub(crate) fn is_tls(addr: &str) -> bool {
    addr.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// Refuse a TLS address when this build has no TLS: say which knob, which address (password
/// hidden) and what to enable, rather than the redis crate's "feature is not enabled".
pub(crate) fn check_supported(knob: &str, addr: &str) -> Result<()> {
    if is_tls(addr) && !cfg!(feature = "redis-tls") {
        return Err(Error::config(
            knob,
            format!(
                "`{}` uses TLS, which this build of llm-cache leaves out: enable its `redis-tls` \
                 feature (`llm-cache = {{ version = \"...\", features = [\"redis-tls\"] }}`)",
                redact_url(addr)
            ),
        ));
    }
    Ok(())
}

/// `None` for plain TCP, `Some(insecure)` for TLS: every address of one store must agree.
pub(crate) fn mode(info: &ConnectionInfo) -> Option<bool> {
    match info.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => Some(*insecure),
        _ => None,
    }
}

/// Check the TLS knobs: they need the feature and at least one `rediss://` address, and their
/// PEM must hold what it should (a certificate and key that go together).
pub(crate) fn validate(settings: &TlsSettings, any_tls: bool) -> Result<()> {
    let knobs = [
        ("redis_tls_root_ca", settings.root_ca.is_some()),
        ("redis_tls_client_cert", settings.client_cert.is_some()),
    ];
    for (knob, set) in knobs {
        if !set {
            continue;
        }
        if !cfg!(feature = "redis-tls") {
            return Err(Error::config(
                knob,
                "needs the `redis-tls` feature of llm-cache, which this build leaves out",
            ));
        }
        if !any_tls {
            return Err(Error::config(
                knob,
                "is set, but no Redis address uses TLS: give `rediss://` addresses",
            ));
        }
    }
    #[cfg(feature = "redis-tls")]
    enabled::check_pem(settings)?;
    Ok(())
}

/// `info` carrying the builder's CA and client certificate when it is a TLS address.
pub(crate) fn with_certs(
    info: ConnectionInfo,
    settings: &TlsSettings,
) -> RedisResult<ConnectionInfo> {
    if mode(&info).is_none() || !settings.is_set() {
        return Ok(info);
    }
    #[cfg(feature = "redis-tls")]
    {
        let client = redis::Client::build_with_tls(info, enabled::certificates(settings))?;
        Ok(client.get_connection_info().clone())
    }
    #[cfg(not(feature = "redis-tls"))]
    unreachable!("validate() refuses TLS addresses without the `redis-tls` feature")
}

/// A node found at run time, reached with the same TLS (mode, CA, client certificate) as
/// `like`, one of the configured addresses: a deployment is TLS all through or not at all.
pub(crate) fn node_like(
    host: String,
    port: u16,
    like: &ConnectionInfo,
) -> RedisResult<ConnectionInfo> {
    let addr = match like.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    addr.into_connection_info()
}

/// The cluster client's TLS: the seeds' mode and the builder's certificates, which the redis
/// crate uses for every node it finds (it would otherwise drop `#insecure` when given certs).
pub(crate) fn cluster_tls(
    builder: ClusterClientBuilder,
    first_seed: &ConnectionInfo,
    settings: &TlsSettings,
) -> ClusterClientBuilder {
    #[cfg(feature = "redis-tls")]
    if let Some(insecure) = mode(first_seed) {
        let builder = builder.tls(if insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
        return if settings.is_set() {
            builder.certs(enabled::certificates(settings))
        } else {
            builder
        };
    }
    let _ = (first_seed, settings);
    builder
}

/// Before the first TLS connection: a crypto provider for rustls, and a warning for every
/// store that does not check the server's certificate.
pub(crate) fn prepare(infos: &[ConnectionInfo], described: &str) {
    if infos.iter().any(|i| mode(i) == Some(true)) {
        tracing::warn!(
            redis = %described,
            "`#insecure` TLS: the Redis server's certificate is not verified, so anyone on the \
             network path can read and change the cache's traffic; give a CA with \
             `redis_tls_root_ca` instead"
        );
    }
    #[cfg(feature = "redis-tls")]
    if infos.iter().any(|i| mode(i).is_some()) {
        enabled::install_crypto_provider();
    }
}

#[cfg(feature = "redis-tls")]
mod enabled {
    use std::sync::Arc;

    use redis::{ClientTlsConfig, TlsCertificates};
    use rustls::RootCertStore;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::sign::CertifiedKey;

    use super::TlsSettings;
    use crate::error::{Error, Result};

    /// The redis crate builds its rustls configs with the process-wide default provider,
    /// which rustls picks by itself only when the build enables exactly one: install ours
    /// (the one reqwest uses too) unless the application installed one already.
    pub(super) fn install_crypto_provider() {
        if CryptoProvider::get_default().is_none() {
            // Losing a race to another installer is fine: any provider will do.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
    }

    pub(super) fn certificates(settings: &TlsSettings) -> TlsCertificates {
        TlsCertificates {
            client_tls: settings
                .client_cert
                .as_ref()
                .map(|(cert, key)| ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: settings.root_ca.clone(),
        }
    }

    fn certs(knob: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::config(knob, format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(Error::config(
                knob,
                "holds no `-----BEGIN CERTIFICATE-----` block",
            ));
        }
        Ok(certs)
    }

    pub(super) fn check_pem(settings: &TlsSettings) -> Result<()> {
        if let Some(pem) = &settings.root_ca {
            let mut roots = RootCertStore::empty();
            for cert in certs("redis_tls_root_ca", pem)? {
                roots.add(cert).map_err(|e| {
                    Error::config(
                        "redis_tls_root_ca",
                        format!("not a usable CA certificate: {e}"),
                    )
                })?;
            }
        }
        if let Some((cert, key)) = &settings.client_cert {
            const KNOB: &str = "redis_tls_client_cert";
            let chain = certs(KNOB, cert)?;
            // The parser's message may quote the key's PEM: say only what is wrong.
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
                Error::config(
                    KNOB,
                    "the key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
                )
            })?;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
                Error::config(
                    KNOB,
                    format!("the certificate and the key do not go together: {e}"),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes() {
        assert!(is_tls("rediss://h:6380"));
        assert!(is_tls("REDISS://h"));
        assert!(is_tls("valkeys://h"));
        assert!(!is_tls("redis://h:6379"));
        assert!(!is_tls("h:6379"));
        assert!(!is_tls("rediss"));
    }

    #[test]
    fn debug_hides_the_certificates_and_the_key() {
        let settings = TlsSettings {
            root_ca: Some(b"-----BEGIN CERTIFICATE-----\nCA\n".to_vec()),
            client_cert: Some((b"CERT".to_vec(), b"PRIVATE KEY".to_vec())),
        };
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("CA\\n") && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }

    #[test]
    fn found_nodes_are_reached_like_the_configured_ones() {
        let plain = "redis://127.0.0.1:7000".into_connection_info().unwrap();
        let node = node_like("10.0.0.2".into(), 7001, &plain).unwrap();
        assert_eq!(node.addr(), &ConnectionAddr::Tcp("10.0.0.2".into(), 7001));
        assert_eq!(mode(&node), None);
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn found_nodes_keep_tls_and_insecure() {
        for (url, insecure) in [
            ("rediss://127.0.0.1:7000", false),
            ("rediss://127.0.0.1:7000/#insecure", true),
        ] {
            let seed = url.into_connection_info().unwrap();
            let node = node_like("10.0.0.2".into(), 7001, &seed).unwrap();
            assert_eq!(mode(&node), Some(insecure), "{url}");
            assert_eq!(node.addr().to_string(), "10.0.0.2:7001");
        }
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn the_crypto_provider_is_installed() {
        enabled::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        enabled::install_crypto_provider(); // twice is fine
    }

    /// Without the feature, every way to ask for TLS fails in `build()`, naming the knob and
    /// the address (password hidden) and saying what to enable.
    #[cfg(not(feature = "redis-tls"))]
    #[tokio::test]
    async fn without_the_feature_tls_is_refused_in_build() {
        use crate::TieredCache;

        let url = "rediss://cache:hunter2@redis.internal:6380/0";
        let cases = [
            ("redis_url", TieredCache::<String>::builder().redis(url)),
            (
                "sentinel",
                TieredCache::<String>::builder().sentinel("m", [url]),
            ),
            ("cluster", TieredCache::<String>::builder().cluster([url])),
        ];
        for (knob, builder) in cases {
            let e = builder.build().await.expect_err("a TLS URL must not build");
            let shown = format!("{e} {e:?}");
            assert!(e.is_config(), "{shown}");
            assert!(shown.contains(&format!("`{knob}`")), "{shown}");
            assert!(
                shown.contains("rediss://cache:***@redis.internal:6380/0"),
                "{shown}"
            );
            assert!(shown.contains("`redis-tls` feature"), "{shown}");
            assert!(!shown.contains("hunter2"), "password leaked: {shown}");
        }
        let knobs = [
            (
                "redis_tls_root_ca",
                TieredCache::<String>::builder()
                    .redis("redis://127.0.0.1:1")
                    .redis_tls_root_ca("pem"),
            ),
            (
                "redis_tls_client_cert",
                TieredCache::<String>::builder()
                    .redis("redis://127.0.0.1:1")
                    .redis_tls_client_cert("cert", "key"),
            ),
        ];
        for (knob, builder) in knobs {
            let e = builder
                .build()
                .await
                .expect_err("a TLS knob must not build");
            let shown = e.to_string();
            assert!(
                e.is_config() && shown.contains(&format!("`{knob}`")),
                "{shown}"
            );
            assert!(shown.contains("`redis-tls` feature"), "{shown}");
        }
    }
}
