//! The probe's input: a request as JSON or as raw HTTP/1.1, read strictly (it is public input)
//! into what the dry run takes.

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use serde::Deserialize;

use super::MAX_INPUT_BYTES;

/// A probe request that cannot be read (400, or exit code 2 from the command).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the request is larger than {MAX_INPUT_BYTES} bytes")]
    TooLarge,
    #[error("the request is not valid JSON: {0}")]
    Json(String),
    #[error("the request is not a valid HTTP/1.1 request: {0}")]
    Http(String),
    #[error("the HTTP/1.1 request's head does not end with a blank line")]
    Incomplete,
    #[error("the body is shorter than its Content-Length ({0} bytes)")]
    ShortBody(usize),
    #[error("a chunked body cannot be probed: give the body with a Content-Length")]
    Chunked,
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("the request target must be a path on this site such as \"/fonts/css2?family=Roboto\", not {0:?}")]
    Target(String),
    #[error("invalid header {0:?}")]
    Header(String),
    #[error("give the body as \"body\" (text) or \"body_base64\", not both")]
    TwoBodies,
    #[error("\"body_base64\" is not valid base64")]
    Base64,
}

/// A request to probe, as a browser would send it to one of the site's URLs.
#[derive(Debug)]
pub struct ProbeRequest {
    pub method: Method,
    /// Origin form: `/path?query`.
    pub uri: Uri,
    /// In the order given.
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The JSON form of a probe request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_base64: Option<String>,
}

fn get() -> String {
    "GET".to_owned()
}

/// Reads a probe request: JSON (`{"method", "path", "headers": [[name, value], ...], "body"}`)
/// when it starts with `{`, else raw HTTP/1.1 text (request line, headers, blank line, body of
/// Content-Length bytes, or the rest of the input without one).
pub fn parse(input: &[u8]) -> Result<ProbeRequest, InputError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(InputError::TooLarge);
    }
    if input.trim_ascii_start().starts_with(b"{") {
        parse_json(input)
    } else {
        parse_http1(input)
    }
}

fn parse_json(input: &[u8]) -> Result<ProbeRequest, InputError> {
    let j: JsonRequest =
        serde_json::from_slice(input).map_err(|e| InputError::Json(e.to_string()))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &j.headers {
        headers.append(header_name(name)?, header_value(name, value.as_bytes())?);
    }
    let body = match (j.body, j.body_base64) {
        (Some(_), Some(_)) => return Err(InputError::TwoBodies),
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| InputError::Base64)?,
        ),
        (None, None) => Bytes::new(),
    };
    Ok(ProbeRequest {
        method: method(&j.method)?,
        uri: origin_form(&j.path)?,
        headers,
        body,
    })
}

fn parse_http1(input: &[u8]) -> Result<ProbeRequest, InputError> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(InputError::Incomplete),
        Err(e) => return Err(InputError::Http(e.to_string())),
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        headers.append(header_name(h.name)?, header_value(h.name, h.value)?);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(InputError::Chunked);
    }
    let rest = &input[head_len..];
    let body = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| InputError::Header("content-length".to_owned()))?;
            let Some(body) = rest.get(..n) else {
                return Err(InputError::ShortBody(n));
            };
            body
        }
        None => rest,
    };
    Ok(ProbeRequest {
        method: method(req.method.unwrap_or("GET"))?,
        uri: origin_form(req.path.unwrap_or(""))?,
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

fn method(m: &str) -> Result<Method, InputError> {
    Method::from_bytes(m.as_bytes()).map_err(|_| InputError::Method(m.to_owned()))
}

/// Only a path on this site: an absolute URL would name a host, which tamis never proxies to.
fn origin_form(target: &str) -> Result<Uri, InputError> {
    let bad = || InputError::Target(target.to_owned());
    if !target.starts_with('/') {
        return Err(bad());
    }
    let uri: Uri = target.parse().map_err(|_| bad())?;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(bad());
    }
    Ok(uri)
}

fn header_name(name: &str) -> Result<HeaderName, InputError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| InputError::Header(name.to_owned()))
}

fn header_value(name: &str, value: &[u8]) -> Result<HeaderValue, InputError> {
    HeaderValue::from_bytes(value).map_err(|_| InputError::Header(name.to_owned()))
}
