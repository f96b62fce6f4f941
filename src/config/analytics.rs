//! An analytics `[[route]]`'s keys (kind = ga4, matomo, plausible, umami): the pseudonym salt,
//! the client address, the location, Matomo's token, the body size; and those keys elsewhere.

use std::time::Duration;

use super::model::AnalyticsConfig;
use super::raw::RawRoute;
use super::validate::{Key, Validator};
use crate::analytics::geo::Precision;
use crate::analytics::visitor::{ClientAddress, DEFAULT_BITS};
use crate::analytics::Protocol;
use crate::policy::Jurisdiction;
use crate::secret::Secret;

impl Validator<'_> {
    /// An analytics route's keys: salt, client address, location, token, body size, rotation.
    pub(super) fn analytics(
        &mut self,
        r: &RawRoute,
        key: Key,
        protocol: Protocol,
        jurisdiction: Jurisdiction,
    ) -> AnalyticsConfig {
        let salt = self.salt_file(r, key);
        self.allow_list_names(r, key, protocol);
        let client_ip = r
            .client_ip
            .as_ref()
            .map_or(ClientAddress::None, |c| *c.get_ref());
        let ip_span = r.client_ip.as_ref().map(|c| c.span());
        if client_ip != ClientAddress::None && jurisdiction != Jurisdiction::Eu {
            self.problem(ip_span.clone(), key("client_ip"), "a client address, even truncated or pseudonymous, only goes to an EU upstream (jurisdiction = \"eu\")");
        }
        let pseudonym_bits = r
            .pseudonym_bits
            .as_ref()
            .map_or(DEFAULT_BITS, |b| *b.get_ref());
        if let Some(b) = &r.pseudonym_bits {
            if !(8..=32).contains(b.get_ref()) {
                self.problem(Some(b.span()), key("pseudonym_bits"), "between 8 and 32");
            } else if client_ip != ClientAddress::Pseudonym {
                self.problem(
                    Some(b.span()),
                    key("pseudonym_bits"),
                    "is for client_ip = \"pseudonym\"",
                );
            }
        }
        let location = r
            .location
            .as_ref()
            .map_or(Precision::None, |l| *l.get_ref());
        let location_span = r.location.as_ref().map(|l| l.span());
        if location != Precision::None {
            // Computed from the address: like the address, it only goes to an
            // EU upstream, and a non-EU one gets nothing beyond its allowlist.
            if jurisdiction != Jurisdiction::Eu {
                self.problem(
                    location_span.clone(),
                    key("location"),
                    "a location computed from the visitor's address only goes to an EU upstream (jurisdiction = \"eu\")",
                );
            }
            if !self.has_geo {
                self.problem(location_span.clone(), key("location"), "needs a location database: set [geo] database = \"/path/to/GeoLite2-City.mmdb\" (or a DB-IP Lite file)");
            }
            match protocol {
                Protocol::Ga4 => self.problem(location_span.clone(), key("location"), "GA4's collect protocol has no location field (Google locates hits by the sending address, which is tamis's): use none"),
                Protocol::Plausible => self.problem(location_span.clone(), key("location"), "Plausible's event API has no location field (it locates by the address it receives): use none, or client_ip = \"truncated\" on an EU Plausible"),
                Protocol::Matomo | Protocol::Umami => {}
            }
        }
        // Umami reads CDN location headers only after the address it reads has
        // passed its local-address check: with no address at all it may skip them.
        if protocol == Protocol::Umami
            && location != Precision::None
            && client_ip != ClientAddress::Pseudonym
        {
            self.warning(location_span.clone(), key("location"), "Umami reads the location headers only beside a client address it does not take for a local one: pair location with client_ip = \"pseudonym\" (EU routes), or check that Umami records the countries");
        }
        let min_visitors = r.min_visitors.as_ref().map_or(10, |m| *m.get_ref());
        if let Some(m) = &r.min_visitors {
            if !(2..=1000).contains(m.get_ref()) {
                self.problem(
                    Some(m.span()),
                    key("min_visitors"),
                    "between 2 and 1000 (a cell of one visitor would identify them; the counts are held in memory)",
                );
            } else if location == Precision::None {
                self.problem(
                    Some(m.span()),
                    key("min_visitors"),
                    "is for location = \"country\" or \"region\"",
                );
            }
        }
        let token = self.token_file(r, key, protocol);
        // Matomo only accepts cip, country and region with a token_auth.
        if protocol == Protocol::Matomo && r.token_file.is_none() {
            if client_ip == ClientAddress::Pseudonym {
                self.problem(ip_span.clone(), key("client_ip"), "Matomo only accepts a visitor address (cip) with the operator's token_auth: set token_file");
            }
            if location != Precision::None {
                self.problem(location_span.clone(), key("location"), "Matomo only accepts country and region with the operator's token_auth: set token_file");
            }
        }
        let max_body = self.size(r.max_body.as_ref(), &key("max_body"), 64 * 1024);
        let max_body = usize::try_from(max_body).unwrap_or(usize::MAX);
        if max_body == 0 || max_body > 16 * 1024 * 1024 {
            let span = r.max_body.as_ref().map(|m| m.span());
            self.problem(span, key("max_body"), "between 1 byte and 16 MiB");
        }
        AnalyticsConfig {
            protocol,
            settings: crate::analytics::Settings {
                allow_event_params: r
                    .allow_event_params
                    .as_ref()
                    .map(|l| l.get_ref().clone())
                    .unwrap_or_default(),
                allow_url_params: r
                    .allow_url_params
                    .as_ref()
                    .map(|l| l.get_ref().clone())
                    .unwrap_or_default(),
            },
            rotate: self.duration(
                r.rotate.as_ref(),
                &key("rotate"),
                Duration::from_secs(86400),
            ),
            salt,
            max_body,
            client_ip,
            pseudonym_bits,
            location,
            min_visitors,
            token,
        }
    }

    /// `salt_file`: the pseudonym key's shared secret, at least 16 bytes.
    fn salt_file(&mut self, r: &RawRoute, key: Key) -> Option<Secret> {
        r.salt_file.as_ref().and_then(|f| {
            let bytes = self.secret_file(f, &key("salt_file"))?;
            if bytes.len() < 16 {
                self.problem(
                    Some(f.span()),
                    key("salt_file"),
                    "must hold at least 16 bytes of secret",
                );
                return None;
            }
            Some(Secret::new("pseudonym salt", &bytes[..]))
        })
    }

    /// `token_file`: Matomo's token_auth, matomo routes only.
    fn token_file(&mut self, r: &RawRoute, key: Key, protocol: Protocol) -> Option<Secret> {
        r.token_file.as_ref().and_then(|f| {
            if protocol != Protocol::Matomo {
                self.problem(
                    Some(f.span()),
                    key("token_file"),
                    "is for matomo routes (Matomo's token_auth)",
                );
                return None;
            }
            let bytes = self.secret_file(f, &key("token_file"))?;
            let t = String::from_utf8_lossy(&bytes);
            let t = t.trim();
            if (1..=256).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()) {
                Some(Secret::new("operator token_auth", t))
            } else {
                self.problem(
                    Some(f.span()),
                    key("token_file"),
                    "must hold one Matomo token_auth (letters and digits)",
                );
                None
            }
        })
    }

    /// The analytics keys on a route of another kind.
    pub(super) fn analytics_only(&mut self, r: &RawRoute, key: Key) {
        let analytics_only = [
            r.allow_event_params.is_some(),
            r.allow_url_params.is_some(),
            r.rotate.is_some(),
            r.salt_file.is_some(),
            r.max_body.is_some(),
            r.client_ip.is_some(),
            r.pseudonym_bits.is_some(),
            r.location.is_some(),
            r.min_visitors.is_some(),
            r.token_file.is_some(),
        ];
        if analytics_only.iter().any(|b| *b) {
            self.problem(
                Some(r.name.span()),
                key("kind"),
                "allow_event_params, allow_url_params, rotate, salt_file, max_body, client_ip, pseudonym_bits, location, min_visitors and token_file are for analytics kinds (ga4, matomo, plausible, umami)",
            );
        }
    }
}
