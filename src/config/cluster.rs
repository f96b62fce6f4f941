//! `[cluster]`: running several replicas as one. `peers` names every replica's admin listener
//! (a list, or a DNS name resolving to all of them) so purge and reload reach them all; `store`
//! names a Valkey/Redis server, run without persistence, through which replicas share each
//! period's pseudonym key and the k-anonymity counts.

use std::time::Duration;

use toml::Spanned;

use super::model::RouteConfig;
use super::raw::RawCluster;
use super::validate::Validator;
use crate::secret::Secret;
use crate::store::{PersistencePolicy, StoreConfig};

/// `[cluster]`, checked.
#[derive(Clone, Debug, Default)]
pub struct ClusterConfig {
    /// Every replica's admin listener as `host:port`; a host name stands for every address it
    /// resolves to (a Kubernetes headless Service).
    pub peers: Vec<String>,
    /// The shared, non-persistent key store, if any.
    pub store: Option<StoreConfig>,
}

/// The store timeout when none is given: short, since a request may wait this long.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(100);

impl Validator<'_> {
    /// `[cluster]`, and the warning for analytics routes whose replicas cannot agree on a key.
    pub(super) fn cluster(
        &mut self,
        raw: Option<RawCluster>,
        routes: &[RouteConfig],
    ) -> Option<ClusterConfig> {
        let raw = raw?;
        let mut peers = Vec::new();
        for p in raw.peers.iter().flatten() {
            let text = p.get_ref().trim();
            let ok = text.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && port.parse::<u16>().is_ok_and(|n| n > 0)
                    && !host.contains(['/', '@', ' '])
            });
            if ok {
                peers.push(text.to_owned());
            } else {
                self.problem(
                    Some(p.span()),
                    "cluster.peers",
                    format!(
                        "{text:?} is not host:port (a replica's admin listener, e.g. \"10.0.0.2:8081\" or \"tamis-admin.tamis.svc:8081\")"
                    ),
                );
            }
        }
        let store = match &raw.store {
            Some(url) => self.store(url, &raw),
            None => {
                let only = [
                    raw.store_password_file.as_ref().map(|v| v.span()),
                    raw.store_ca_file.as_ref().map(|v| v.span()),
                    raw.store_timeout.as_ref().map(|v| v.span()),
                    raw.store_prefix.as_ref().map(|v| v.span()),
                    raw.store_persistence.as_ref().map(|v| v.span()),
                ];
                if let Some(span) = only.into_iter().flatten().next() {
                    self.problem(
                        Some(span),
                        "cluster",
                        "store_password_file, store_ca_file, store_timeout, store_prefix and store_persistence are for cluster.store",
                    );
                }
                None
            }
        };
        let unshared: Vec<&str> = routes
            .iter()
            .filter(|r| r.analytics.as_ref().is_some_and(|a| a.salt.is_none()))
            .map(|r| r.name.as_str())
            .collect();
        if !peers.is_empty() && raw.store.is_none() && !unshared.is_empty() {
            let span = raw.peers.as_ref().and_then(|p| p.first()).map(|p| p.span());
            self.warning(
                span,
                "cluster.peers",
                format!(
                    "analytics routes {} draw a random pseudonym key on each replica: a visitor counts once per replica that sees them, and a location cell needs up to replicas × min_visitors; set cluster.store (a Valkey/Redis without persistence) or the routes' salt_file",
                    unshared.join(", ")
                ),
            );
        }
        Some(ClusterConfig { peers, store })
    }

    fn store(&mut self, url: &Spanned<String>, raw: &RawCluster) -> Option<StoreConfig> {
        let text = url.get_ref().trim();
        let parsed = http::Uri::try_from(text).ok();
        let scheme = parsed.as_ref().and_then(|u| u.scheme_str());
        let authority = parsed.as_ref().and_then(|u| u.authority());
        let mut ok = true;
        if !matches!(scheme, Some("redis" | "rediss")) || authority.is_none() {
            self.problem(
                Some(url.span()),
                "cluster.store",
                "is redis://host:port or rediss://host:port (TLS), e.g. \"rediss://tamis@valkey:6379/0\"",
            );
            ok = false;
        } else if authority.is_some_and(|a| {
            a.as_str()
                .rsplit_once('@')
                .is_some_and(|(user, _)| user.contains(':'))
        }) {
            // Never quoted: the text holds a password.
            self.problem(
                Some(url.span()),
                "cluster.store",
                "holds a password: put it in store_password_file (the URL may name the user)",
            );
            ok = false;
        }
        let password = raw.store_password_file.as_ref().and_then(|f| {
            let bytes = self.secret_file(f, "cluster.store_password_file")?;
            match std::str::from_utf8(&bytes) {
                Ok(t) if !t.trim().is_empty() => Some(Secret::new("store password", t.trim())),
                _ => {
                    self.problem(
                        Some(f.span()),
                        "cluster.store_password_file",
                        "must hold the store user's password (UTF-8 text)",
                    );
                    None
                }
            }
        });
        let ca = raw.store_ca_file.as_ref().and_then(|f| {
            let bytes = self.secret_file(f, "cluster.store_ca_file")?;
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&bytes)
                .filter(Result::is_ok)
                .count();
            if certs == 0 {
                self.problem(
                    Some(f.span()),
                    "cluster.store_ca_file",
                    "holds no PEM certificate",
                );
                return None;
            }
            Some(bytes.to_vec())
        });
        if ca.is_some() && scheme != Some("rediss") {
            let span = raw.store_ca_file.as_ref().map(|f| f.span());
            self.problem(
                span,
                "cluster.store_ca_file",
                "is for a TLS store (rediss://)",
            );
        }
        let timeout = self.duration(
            raw.store_timeout.as_ref(),
            "cluster.store_timeout",
            DEFAULT_STORE_TIMEOUT,
        );
        if timeout > Duration::from_secs(2) {
            let span = raw.store_timeout.as_ref().map(|t| t.span());
            self.problem(
                span,
                "cluster.store_timeout",
                "at most 2s: a tracking request may wait this long when the store is slow",
            );
        }
        let prefix = raw
            .store_prefix
            .as_ref()
            .map_or("tamis:", |p| p.get_ref().as_str())
            .to_owned();
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            let span = raw.store_prefix.as_ref().map(|p| p.span());
            self.problem(
                span,
                "cluster.store_prefix",
                "1 to 64 printable ASCII characters, no spaces (e.g. \"tamis:\")",
            );
        }
        ok.then(|| StoreConfig {
            url: text.to_owned(),
            password,
            ca,
            timeout,
            persistence: raw
                .store_persistence
                .as_ref()
                .map_or(PersistencePolicy::Refuse, |p| *p.get_ref()),
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    const GA: &str = "[[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/a/\"\n\
                      upstream = \"https://region1.google-analytics.com/\"\n";

    #[test]
    fn peers_without_a_shared_key_are_warned_about() {
        let base = "[server]\nlisten = \"127.0.0.1:0\"\n";
        let c = parse(&format!(
            "{base}[cluster]\npeers = [\"10.0.0.2:8081\"]\n{GA}"
        ))
        .unwrap();
        let w: Vec<_> = c
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.key, w.message))
            .collect();
        assert!(
            w.iter()
                .any(|w| w.contains("cluster.peers") && w.contains("ga") && w.contains("store")),
            "{w:?}"
        );
        // With a store, no warning.
        let c = parse(&format!(
            "{base}[cluster]\npeers = [\"10.0.0.2:8081\"]\nstore = \"redis://127.0.0.1:6379\"\n{GA}"
        ))
        .unwrap();
        assert!(
            !c.warnings.iter().any(|w| w.key == "cluster.peers"),
            "{:?}",
            c.warnings
        );
        let store = c.cluster.unwrap().store.unwrap();
        assert_eq!(store.prefix, "tamis:");
        assert_eq!(store.timeout, super::DEFAULT_STORE_TIMEOUT);
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_quoted() {
        let e = parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n[cluster]\nstore = \"redis://tamis:hunter2secret@valkey:6379\"\n",
        )
        .unwrap_err();
        assert!(e.contains("store_password_file"), "{e}");
        assert!(!e.contains("hunter2secret"), "{e}");
        for bad in [
            "store = \"http://valkey:6379\"",
            "peers = [\"valkey\"]",
            "store_timeout = \"50ms\"",
            "store = \"redis://v:1\"\nstore_timeout = \"10s\"",
        ] {
            let e = parse(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[cluster]\n{bad}\n"
            ))
            .unwrap_err();
            assert!(e.contains("cluster"), "{bad}: {e}");
        }
    }
}
