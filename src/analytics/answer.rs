//! What a tracking endpoint's answer gives the browser: tamis's own answer, never the
//! upstream's bytes. A tracker needs at most the status class and, for two protocols, a few
//! typed fields; an upstream that echoes its input (debug output, error pages) would otherwise
//! hand the browser what tamis added (the operator's token, the synthetic address) or removed
//! (the visitor's dropped values). So each protocol's answer is a fixed body, or fields the
//! protocol module allows, type-checked and serialised again; the status is kept only from a
//! short list, else the fallback of its class.

use bytes::Bytes;
use http::StatusCode;

use super::{matomo, umami, Protocol};

/// What a tracker reads from a successful answer, and so what tamis answers it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Success {
    /// A 1×1 transparent GIF, what an image hit expects (GA4, Matomo); the scripts ignore it.
    Pixel,
    /// `ok`, Plausible's own answer, which its script ignores.
    Ok,
    /// Matomo bulk tracking's counts ([`matomo::bulk_answer`]).
    BulkCounts,
    /// Umami's `disabled` flag, which stops its tracker ([`umami::scrub_answer`]).
    UmamiFlags,
}

impl Success {
    /// The answer for a request of `protocol` (`bulk`: a Matomo bulk JSON request).
    pub fn of(protocol: Protocol, bulk: bool) -> Success {
        match protocol {
            Protocol::Ga4 => Success::Pixel,
            Protocol::Matomo if bulk => Success::BulkCounts,
            Protocol::Matomo => Success::Pixel,
            Protocol::Plausible => Success::Ok,
            Protocol::Umami => Success::UmamiFlags,
        }
    }

    /// Whether any of the upstream's body is used (read capped and unencoded, then typed).
    pub fn reads_body(self) -> bool {
        matches!(self, Success::BulkCounts | Success::UmamiFlags)
    }
}

/// Whether tamis asks this protocol's upstream for an unencoded answer: those it may read
/// (an encoded one is not decoded but counted unreadable, so the minimal answer goes).
pub fn wants_identity(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Matomo | Protocol::Umami)
}

/// What `tamis check` and the transparency page say of a tracking endpoint's answers.
pub const DISCLOSURE: &str = "the answer is tamis's own, never the upstream's bytes or headers: \
its status (a short list kept, else 200, 400 or 502 by class; a redirect is 502), a fixed body \
(an empty 204, a 1x1 GIF, ok) or the few typed fields a tracker reads (Matomo bulk counts, \
Umami's disabled flag), and tamis's own Content-Type, Content-Length, Cache-Control: no-store";

/// The headers a tracking answer has, all tamis's own (none of the upstream's passes: any
/// could carry an echo), and why.
pub const HEADERS: &[(&str, &str)] = &[
    (
        "content-type",
        "tamis's own: image/gif, application/json or text/plain",
    ),
    ("content-length", "tamis's own (none on a 204)"),
    (
        "cache-control",
        "tamis's own no-store: each hit is sent, never answered from a cache",
    ),
];

/// The most of an answer body tamis reads (the JSON ones are a few dozen bytes).
pub const MAX_ANSWER: usize = 64 * 1024;

/// A transparent 1×1 GIF (43 bytes), the answer trackers' image hits have always had.
pub const PIXEL: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\
\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// Upstream statuses the browser gets as they are: what the protocols answer, and the common
/// errors an operator would want to see in the browser's console. Any other status becomes its
/// class's fallback ([`status`]).
pub const KEPT_STATUSES: &[u16] = &[
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 413, 414, 415, 422, 429, 502, 503, 504,
];

/// The browser's status for an upstream's: kept if listed, else 200, 400 or 502 by class. A
/// redirect (or an informational status) is 502: trackers never follow one, and its
/// `Location` is where an echo of the request would be.
pub fn status(upstream: StatusCode) -> StatusCode {
    if KEPT_STATUSES.contains(&upstream.as_u16()) {
        return upstream;
    }
    if upstream.is_success() {
        StatusCode::OK
    } else if upstream.is_client_error() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::BAD_GATEWAY
    }
}

/// tamis's own answer to a tracking request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Own {
    pub status: StatusCode,
    /// `None` with an empty body.
    pub content_type: Option<&'static str>,
    pub body: Bytes,
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The answer for an upstream's `status` and, when [`Success::reads_body`] and it could be
/// read unencoded, its `body`. Only typed fields of `body` can reach the browser.
pub fn answer(success: Success, upstream: StatusCode, body: Option<&[u8]>) -> Own {
    let status = status(upstream);
    let own = |content_type, body: Bytes| Own {
        status,
        content_type: Some(content_type),
        body,
    };
    if status == StatusCode::NO_CONTENT {
        return Own {
            status,
            content_type: None,
            body: Bytes::new(),
        };
    }
    if status.is_client_error() {
        return own(
            TEXT,
            Bytes::from_static(b"tracking request refused upstream\n"),
        );
    }
    if !status.is_success() {
        let message: &'static [u8] = if upstream.is_redirection() {
            b"analytics upstream redirected\n"
        } else {
            b"analytics upstream failed\n"
        };
        return own(TEXT, Bytes::from_static(message));
    }
    match success {
        Success::Pixel => own("image/gif", Bytes::from_static(PIXEL)),
        Success::Ok => own(TEXT, Bytes::from_static(b"ok")),
        Success::BulkCounts => own("application/json", matomo::bulk_answer(body).into()),
        Success::UmamiFlags => own(
            "application/json",
            umami::scrub_answer(body.unwrap_or_default()).into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a hostile upstream echoes: the operator's token, a synthetic address, the
    /// visitor's dropped values, an HTML error page.
    const ECHO: &str = r#"{"status":"success","tracked":1,"invalid":0,"disabled":false,
        "token_auth":"0123456789abcdef","cip":"2001:db8:abcd:e000::","debug":"uid=alice@mail.example",
        "message":"<html>token_auth=0123456789abcdef</html>","sessionId":"s-1","cache":"eyJ0"}"#;

    const SECRETS: &[&str] = &[
        "0123456789abcdef",
        "2001:db8",
        "alice",
        "html",
        "s-1",
        "eyJ0",
    ];

    #[test]
    fn no_upstream_byte_but_typed_fields_reaches_the_browser() {
        let all = [
            Success::Pixel,
            Success::Ok,
            Success::BulkCounts,
            Success::UmamiFlags,
        ];
        for success in all {
            for code in (100..600).step_by(7).chain([200, 204, 302, 404, 500, 503]) {
                let upstream = StatusCode::from_u16(code).unwrap();
                let a = answer(success, upstream, Some(ECHO.as_bytes()));
                let text = String::from_utf8_lossy(&a.body);
                for s in SECRETS {
                    assert!(!text.contains(s), "{success:?} {code}: {text}");
                }
                // The status class is kept; a redirect or informational status is a 502.
                let class = |s: StatusCode| s.as_u16() / 100;
                if upstream.is_redirection() || upstream.is_informational() {
                    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{code}");
                } else {
                    assert_eq!(class(a.status), class(upstream), "{code}");
                }
                assert_eq!(a.content_type.is_none(), a.body.is_empty(), "{code}");
            }
        }
    }

    #[test]
    fn each_protocol_answers_success_as_its_tracker_expects() {
        let ok = StatusCode::OK;
        assert_eq!(answer(Success::Pixel, ok, None).body.as_ref(), PIXEL);
        assert_eq!(
            answer(Success::Pixel, ok, None).content_type,
            Some("image/gif")
        );
        assert_eq!(
            answer(Success::Ok, StatusCode::ACCEPTED, None)
                .body
                .as_ref(),
            b"ok"
        );
        assert_eq!(answer(Success::Ok, StatusCode::ACCEPTED, None).status, 202);
        let bulk = answer(Success::BulkCounts, ok, Some(ECHO.as_bytes()));
        assert_eq!(
            bulk.body.as_ref(),
            br#"{"invalid":0,"status":"success","tracked":1}"#
        );
        let umami = answer(Success::UmamiFlags, ok, Some(ECHO.as_bytes()));
        assert_eq!(umami.body.as_ref(), br#"{"disabled":false}"#);
        // Unreadable (too large, encoded, timed out): the minimal JSON.
        assert_eq!(answer(Success::UmamiFlags, ok, None).body.as_ref(), b"{}");
        assert_eq!(answer(Success::BulkCounts, ok, None).body.as_ref(), b"{}");
        for s in [
            Success::Pixel,
            Success::Ok,
            Success::BulkCounts,
            Success::UmamiFlags,
        ] {
            let a = answer(s, StatusCode::NO_CONTENT, Some(ECHO.as_bytes()));
            assert_eq!((a.status, a.body.len()), (StatusCode::NO_CONTENT, 0));
        }
    }

    #[test]
    fn statuses_are_kept_from_a_short_list_else_their_class_fallback() {
        let s = |c: u16| status(StatusCode::from_u16(c).unwrap()).as_u16();
        assert_eq!([s(204), s(202), s(429), s(503)], [204, 202, 429, 503]);
        assert_eq!(
            [s(206), s(299), s(418), s(499), s(500), s(507), s(599)],
            [200, 200, 400, 400, 502, 502, 502]
        );
        assert_eq!([s(301), s(302), s(304), s(101)], [502, 502, 502, 502]);
    }

    #[test]
    fn the_pixel_is_a_1x1_gif() {
        assert_eq!(PIXEL.len(), 43);
        assert!(PIXEL.starts_with(b"GIF89a\x01\x00\x01\x00"));
        assert!(PIXEL.ends_with(b";"));
    }

    #[test]
    fn only_protocols_whose_answer_is_read_ask_for_it_unencoded() {
        for p in [
            Protocol::Ga4,
            Protocol::Matomo,
            Protocol::Plausible,
            Protocol::Umami,
        ] {
            let read = Success::of(p, true).reads_body() || Success::of(p, false).reads_body();
            assert_eq!(wants_identity(p), read, "{p:?}");
        }
    }
}
