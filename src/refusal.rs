//! tamis's own answers, in one table: every status and message tamis answers with itself on
//! the public listeners, when it refuses a request or an upstream fails it. Each is a short
//! plain-text answer that no cache keeps ([`crate::body::error_response`] writes them all).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{error_response, ProxyBody};

/// Why tamis answers a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// CONNECT: tamis is no forward proxy.
    Connect,
    /// An absolute-form target on HTTP/1: no proxying to a host the client names.
    AbsoluteForm,
    /// The request target is over `limits.max_uri_bytes` (RFC 9110 §15.5.15).
    UriTooLong,
    /// No route, or no such page.
    NotFound,
    /// tamis's own public page (the probe reports it; nothing is sent upstream).
    OwnPage,
    /// A path that leaves the route's upstream base, or no tile.
    BadPath,
    /// A method the route does not take; the `Allow` it does.
    MethodNotAllowed(&'static str),
    /// An analytics route's path that is not one of its protocol's endpoints.
    NotTrackingEndpoint,
    /// A body over the route's or the server's cap.
    BodyTooLarge,
    /// A body that broke off.
    BodyUnreadable,
    /// A tracking request its protocol's scrubber refused.
    MalformedTracking,
    /// Over the route's per-client rate (the caller adds `Retry-After`).
    TooManyRequests,
    /// Over the server's connection or request cap (the caller adds `Retry-After`).
    Overloaded,
    /// The upstream failed (502) or its circuit is open (503), with the status to answer.
    UpstreamUnavailable(StatusCode),
    /// The upstream did not answer in time.
    UpstreamTimedOut,
    /// The upstream's body broke off.
    UpstreamBodyFailed,
    /// The upstream redirected outside its route.
    RedirectedElsewhere,
    /// An upstream stylesheet that could not be rewritten: never served as it came.
    StylesheetRefused,
    /// A 304 that would change how the stored body is read.
    InconsistentRefresh,
    /// Over the probe's own rate.
    TooManyProbes,
    /// A probe request over its size cap.
    ProbeTooLarge,
    /// A probe request that broke off.
    ProbeUnreadable,
    /// The probe could not render its report.
    ProbeFailed,
}

impl Refusal {
    /// The status tamis answers with.
    pub fn status(self) -> StatusCode {
        use Refusal::*;
        match self {
            Connect | AbsoluteForm | BadPath | BodyUnreadable | MalformedTracking
            | ProbeUnreadable => StatusCode::BAD_REQUEST,
            UriTooLong => StatusCode::URI_TOO_LONG,
            NotFound | NotTrackingEndpoint => StatusCode::NOT_FOUND,
            OwnPage => StatusCode::OK,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge | ProbeTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            TooManyRequests | TooManyProbes => StatusCode::TOO_MANY_REQUESTS,
            Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnavailable(status) => status,
            UpstreamTimedOut => StatusCode::GATEWAY_TIMEOUT,
            UpstreamBodyFailed | RedirectedElsewhere | StylesheetRefused | InconsistentRefresh => {
                StatusCode::BAD_GATEWAY
            }
            ProbeFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text of the answer (one line).
    pub fn message(self) -> &'static str {
        use Refusal::*;
        match self {
            Connect => "CONNECT is not supported\n",
            AbsoluteForm => "absolute-form request targets are not accepted\n",
            UriTooLong => "request target too long\n",
            NotFound => "not found\n",
            OwnPage => "answered by tamis itself (its own page): nothing is sent upstream\n",
            BadPath => "bad path\n",
            MethodNotAllowed(_) => "method not allowed\n",
            NotTrackingEndpoint => "not a tracking endpoint\n",
            BodyTooLarge => "request body too large\n",
            BodyUnreadable => "request body unreadable\n",
            MalformedTracking => "malformed tracking request\n",
            TooManyRequests => "too many requests\n",
            Overloaded => "overloaded, try again shortly\n",
            UpstreamUnavailable(_) => "upstream unavailable\n",
            UpstreamTimedOut => "upstream timed out\n",
            UpstreamBodyFailed => "upstream body failed\n",
            RedirectedElsewhere => "upstream redirected elsewhere\n",
            StylesheetRefused => "upstream stylesheet could not be rewritten\n",
            InconsistentRefresh => "upstream answer inconsistent with the stored one\n",
            TooManyProbes => "too many probes\n",
            ProbeTooLarge => "probe request too large\n",
            ProbeUnreadable => "probe body unreadable\n",
            ProbeFailed => "probe failed\n",
        }
    }

    /// The `Allow` header of a 405.
    pub fn allow(self) -> Option<&'static str> {
        match self {
            Refusal::MethodNotAllowed(allow) => Some(allow),
            _ => None,
        }
    }

    /// A failed upstream exchange as the visitor sees it: 504 when it timed out, else the
    /// failure's own status (502, or 503 for an open circuit).
    pub fn upstream(status: StatusCode) -> Refusal {
        if status == StatusCode::GATEWAY_TIMEOUT {
            Refusal::UpstreamTimedOut
        } else {
            Refusal::UpstreamUnavailable(status)
        }
    }

    /// The answer: status, text, and `Allow` on a 405.
    pub fn response(self) -> Response<ProxyBody> {
        let mut r = error_response(self.status(), self.message());
        if let Some(allow) = self.allow() {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_is_one_line_of_text_with_a_status_of_its_class() {
        use Refusal::*;
        let all = [
            Connect,
            AbsoluteForm,
            UriTooLong,
            NotFound,
            OwnPage,
            BadPath,
            MethodNotAllowed("GET, HEAD"),
            NotTrackingEndpoint,
            BodyTooLarge,
            BodyUnreadable,
            MalformedTracking,
            TooManyRequests,
            Overloaded,
            UpstreamUnavailable(StatusCode::SERVICE_UNAVAILABLE),
            UpstreamTimedOut,
            UpstreamBodyFailed,
            RedirectedElsewhere,
            StylesheetRefused,
            InconsistentRefresh,
            TooManyProbes,
            ProbeTooLarge,
            ProbeUnreadable,
            ProbeFailed,
        ];
        for r in all {
            let m = r.message();
            assert!(m.ends_with('\n') && m.matches('\n').count() == 1, "{r:?}");
            let upstream = matches!(
                r,
                UpstreamUnavailable(_)
                    | UpstreamTimedOut
                    | UpstreamBodyFailed
                    | RedirectedElsewhere
                    | StylesheetRefused
                    | InconsistentRefresh
            );
            assert_eq!(
                r.status().is_server_error(),
                upstream || r == Overloaded || r == ProbeFailed,
                "{r:?}"
            );
            let response = r.response();
            assert_eq!(response.status(), r.status());
            assert_eq!(
                response.headers().get(header::ALLOW).is_some(),
                r.allow().is_some()
            );
        }
        assert_eq!(
            Refusal::upstream(StatusCode::GATEWAY_TIMEOUT),
            UpstreamTimedOut
        );
        assert_eq!(
            Refusal::upstream(StatusCode::BAD_GATEWAY).status(),
            StatusCode::BAD_GATEWAY
        );
    }
}
