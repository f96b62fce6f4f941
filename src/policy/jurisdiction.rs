//! Well-known hosts run from outside the EU: the safety net under `jurisdiction = "eu"`.
//!
//! An upstream is outside the EU unless its config says otherwise; saying `eu` lets the
//! visitor's User-Agent (and `forward_headers`, a truncated or pseudonymous address) through.
//! Said of one of these hosts, it is refused unless the operator states why (`eu_reason`, e.g.
//! an EU-only endpoint and its contract). The table catches the common mistakes; it proves
//! nothing of a host it does not list.

/// One entry: a host and every host under it (`googleapis.com` covers `fonts.googleapis.com`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonEuHost {
    /// The registered domain (or host) the entry covers, lower case.
    pub suffix: &'static str,
    /// Who runs it, and where, as a message names them.
    pub operator: &'static str,
}

const GOOGLE: &str = "Google LLC (United States)";
const CLOUDFLARE: &str = "Cloudflare, Inc. (United States)";
const FASTLY: &str = "Fastly, Inc. (United States)";
const AKAMAI: &str = "Akamai Technologies, Inc. (United States)";
const AUTOMATTIC: &str = "Automattic Inc. (United States)";
const META: &str = "Meta Platforms, Inc. (United States)";

/// The table. Each group names its source: the operator's own legal or product pages (who
/// runs the service, and where), or a ruling on the transfer.
pub const NON_EU_HOSTS: &[NonEuHost] = &[
    // Google: policies.google.com/privacy ("Google LLC", Mountain View, California); Google
    // Fonts' transfer of the visitor's address to Google in the US: LG München I, 3 O 17493/20
    // (20 January 2022); Google Analytics': CNIL formal notices of February 2022.
    h("googleapis.com", GOOGLE), // fonts., maps., ajax., storage.googleapis.com
    h("gstatic.com", GOOGLE),    // fonts.gstatic.com, www.gstatic.com (reCAPTCHA)
    h("google-analytics.com", GOOGLE),
    h("googletagmanager.com", GOOGLE),
    h("googlesyndication.com", GOOGLE),
    h("googleadservices.com", GOOGLE),
    h("doubleclick.net", GOOGLE),
    h("googleusercontent.com", GOOGLE),
    h("ggpht.com", GOOGLE),
    h("google.com", GOOGLE),
    h("recaptcha.net", GOOGLE),
    // YouTube: youtube.com/t/terms ("Google LLC", 1600 Amphitheatre Parkway, Mountain View).
    h("youtube.com", GOOGLE),
    h("youtube-nocookie.com", GOOGLE),
    h("ytimg.com", GOOGLE),
    h("googlevideo.com", GOOGLE),
    // Cloudflare: cloudflare.com/privacypolicy ("Cloudflare, Inc.", San Francisco); cdnjs:
    // cdnjs.com/about ("powered by Cloudflare"); unpkg: unpkg.com ("served by Cloudflare").
    h("cloudflare.com", CLOUDFLARE), // cdnjs.cloudflare.com, challenges.cloudflare.com
    h("cloudflareinsights.com", CLOUDFLARE),
    h("unpkg.com", CLOUDFLARE),
    // jsDelivr: jsdelivr.com/network (served by Cloudflare's and Fastly's networks, among others).
    h(
        "jsdelivr.net",
        "jsDelivr's CDNs, Cloudflare and Fastly (United States)",
    ),
    // Fastly: fastly.com/privacy ("Fastly, Inc.", San Francisco).
    h("fastly.net", FASTLY),
    h("fastlylb.net", FASTLY),
    // jQuery's CDN: releases.jquery.com ("powered by Fastly"); the OpenJS Foundation (US).
    h("code.jquery.com", FASTLY),
    // Akamai: akamai.com/legal/privacy-statement ("Akamai Technologies, Inc.", Cambridge, MA).
    h("akamai.net", AKAMAI),
    h("akamaihd.net", AKAMAI),
    h("akamaized.net", AKAMAI),
    h("akamaiedge.net", AKAMAI),
    h("edgekey.net", AKAMAI),
    h("edgesuite.net", AKAMAI),
    // Gravatar and WordPress.com's image CDN: automattic.com/privacy ("Automattic Inc.", San
    // Francisco).
    h("gravatar.com", AUTOMATTIC),
    h("wp.com", AUTOMATTIC), // i0.wp.com, s0.wp.com
    // Amazon CloudFront: aws.amazon.com/privacy ("Amazon Web Services, Inc.", Seattle).
    h(
        "cloudfront.net",
        "Amazon Web Services, Inc. (United States)",
    ),
    // Microsoft's Ajax CDN and Clarity: privacy.microsoft.com ("Microsoft Corporation", Redmond).
    h("aspnetcdn.com", "Microsoft Corporation (United States)"),
    h("clarity.ms", "Microsoft Corporation (United States)"),
    // Adobe Fonts (Typekit): adobe.com/privacy ("Adobe Inc.", San Jose).
    h("typekit.net", "Adobe Inc. (United States)"),
    // Font Awesome's CDN and kits: fontawesome.com/privacy ("Fonticons, Inc.", Bentonville, AR).
    h("fontawesome.com", "Fonticons, Inc. (United States)"),
    // Mapbox: mapbox.com/legal/privacy ("Mapbox, Inc.", Washington, DC).
    h("mapbox.com", "Mapbox, Inc. (United States)"),
    // Meta's pixel, SDK and CDN: facebook.com/privacy/policy ("Meta Platforms, Inc.", Menlo
    // Park); the transfers: EDPB binding decision 1/2023 (Meta Platforms Ireland, May 2023).
    h("facebook.net", META),
    h("facebook.com", META),
    h("fbcdn.net", META),
    // X (Twitter): x.com/en/privacy ("X Corp.", San Francisco, for users outside the EU and UK;
    // its widgets' hosts are X Corp.'s).
    h("twitter.com", "X Corp. (United States)"),
    h("twimg.com", "X Corp. (United States)"),
    // Vimeo: vimeo.com/privacy ("Vimeo.com, Inc.", New York).
    h("vimeo.com", "Vimeo.com, Inc. (United States)"),
    h("vimeocdn.com", "Vimeo.com, Inc. (United States)"),
    // Stripe.js: stripe.com/privacy ("Stripe, Inc.", South San Francisco, for its US services;
    // js.stripe.com is served from Stripe, Inc.'s infrastructure).
    h("stripe.com", "Stripe, Inc. (United States)"),
    // hCaptcha: hcaptcha.com/privacy ("Intuition Machines, Inc.", United States).
    h("hcaptcha.com", "Intuition Machines, Inc. (United States)"),
];

const fn h(suffix: &'static str, operator: &'static str) -> NonEuHost {
    NonEuHost { suffix, operator }
}

/// The table's entry for `host` (a host name, with or without a port), if any: the host is
/// an entry's suffix or under it, compared without case or a trailing dot.
pub fn known_non_eu(host: &str) -> Option<&'static NonEuHost> {
    let host = match host.strip_prefix('[') {
        Some(_) => return None, // an IPv6 literal names no operator
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    NON_EU_HOSTS.iter().find(|e| {
        host == e.suffix
            || host
                .strip_suffix(e.suffix)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_operators_make_the_usual_mistakes_with_are_known() {
        for host in [
            "fonts.googleapis.com",
            "fonts.gstatic.com",
            "www.google-analytics.com",
            "region1.google-analytics.com",
            "www.googletagmanager.com",
            "cdnjs.cloudflare.com",
            "cdn.jsdelivr.net",
            "unpkg.com",
            "www.youtube-nocookie.com",
            "i.ytimg.com",
            "secure.gravatar.com",
            "FONTS.GOOGLEAPIS.COM.",
            "fonts.googleapis.com:443",
            "global.ssl.fastly.net",
            "a248.e.akamai.net",
            "code.jquery.com",
        ] {
            assert!(known_non_eu(host).is_some(), "{host}");
        }
        assert_eq!(
            known_non_eu("fonts.googleapis.com").map(|e| e.operator),
            Some(GOOGLE)
        );
    }

    #[test]
    fn only_whole_labels_match_and_eu_hosts_are_not_listed() {
        for host in [
            "fonts.bunny.net",
            "notgoogle.com",
            "googleapis.com.evil.example",
            "jquery.com",
            "plausible.io",
            "matomo.example.eu",
            "tile.openstreetmap.org",
            "[2001:db8::1]:443",
            "",
        ] {
            assert_eq!(known_non_eu(host), None, "{host}");
        }
    }

    #[test]
    fn the_table_is_lower_case_and_has_no_duplicate() {
        for (i, e) in NON_EU_HOSTS.iter().enumerate() {
            assert_eq!(e.suffix, e.suffix.to_ascii_lowercase());
            assert!(!e.suffix.starts_with('.') && e.suffix.contains('.'));
            assert!(
                !NON_EU_HOSTS[..i].iter().any(|o| o.suffix == e.suffix),
                "{}",
                e.suffix
            );
        }
    }
}
