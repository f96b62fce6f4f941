//! The disk tier's file format, as pure functions: one file per stored object (or per Vary
//! list), written whole and checked whole.
//!
//! ```text
//! magic "TAMISDC\n" | version u16 | kind u8 | flags u8 | head_len u32 | body_len u64
//! head (head_len bytes): route u64, variant u64, uri, stored (secs u64, nanos u32), keep,
//!     then for an object: status u16, fresh_for, age, stale_while_revalidate,
//!     stale_if_error, entry keep, upstream ETag?, Last-Modified?, vary values, headers;
//!     for a Vary list: its names
//! body (body_len bytes)
//! crc32 u32 (of everything before it)
//! ```
//!
//! Integers are little-endian; strings and byte strings are a u32 length then the bytes; an
//! optional one is a u8 (0 none, 1 some) then the value; a duration is secs u64 + nanos u32.
//! What is written is the wall-clock time the object was stored at and its age then, never a
//! monotonic instant: those mean nothing to the next process.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};

use super::super::freshness::Lifetimes;
use super::super::key::{CacheKey, VaryValues};

/// The first bytes of every record file.
pub const MAGIC: &[u8; 8] = b"TAMISDC\n";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes before the head: magic, version, kind, flags, head length, body length.
pub const PREFIX_LEN: usize = 8 + 2 + 1 + 1 + 4 + 8;
/// The checksum after the body.
pub const TRAILER_LEN: usize = 4;
/// A head larger than this is refused (headers are bounded far below it when stored).
pub const MAX_HEAD_LEN: u32 = 1 << 20;

const FLAG_OWN_HEAD: u8 = 1;
const FLAG_STYLESHEET: u8 = 2;
const FLAG_MUST_REVALIDATE: u8 = 4;

/// Why a file is not a record this build can serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("not a tamis disk record (bad magic)")]
    Magic,
    #[error("record version {0}, this build reads {VERSION}")]
    Version(u16),
    #[error("record length does not match its header ({0})")]
    Length(&'static str),
    #[error("record checksum does not match")]
    Checksum,
    #[error("record field {0} is malformed")]
    Field(&'static str),
    #[error("record holds another key")]
    Key,
}

/// What a record holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Kept {
    /// A stored answer; its body follows the head.
    Object(Box<Object>),
    /// The headers the objects under this primary key vary on.
    Vary(Vec<HeaderName>),
}

/// A stored answer's facts, as the memory entry holds them.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub status: StatusCode,
    /// The scrubbed headers, as served (tamis's own ETag included).
    pub headers: HeaderMap,
    pub stylesheet: bool,
    pub own_head: bool,
    pub upstream_etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
    pub vary: VaryValues,
    pub lifetimes: Lifetimes,
    /// How long past its stale windows it is kept for revalidation (the entry's `keep`).
    pub keep_for_revalidation: Duration,
}

/// One record's head: the key, what is kept, and when.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub key: CacheKey,
    /// Wall-clock time the object began its residence (its age then is `lifetimes.age`).
    pub stored: SystemTime,
    /// How long after `stored` the store keeps it at all.
    pub keep: Duration,
    pub kept: Kept,
}

impl Record {
    /// Wall-clock time after which nothing may use it.
    pub fn keep_until(&self) -> SystemTime {
        self.stored.checked_add(self.keep).unwrap_or(self.stored)
    }
}

/// The bytes before the body (prefix and head) for a record whose body is `body_len` long.
/// The file is `head`, the body, then [`trailer`] of both.
pub fn encode_head(record: &Record, body_len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(&record.key.route.to_le_bytes());
    h.extend_from_slice(&record.key.variant.to_le_bytes());
    put_bytes(&mut h, record.key.uri.to_string().as_bytes());
    put_time(&mut h, record.stored);
    put_duration(&mut h, record.keep);
    let (kind, flags) = match &record.kept {
        Kept::Object(o) => {
            h.extend_from_slice(&o.status.as_u16().to_le_bytes());
            let l = &o.lifetimes;
            for d in [
                l.fresh_for,
                l.age,
                l.stale_while_revalidate,
                l.stale_if_error,
                o.keep_for_revalidation,
            ] {
                put_duration(&mut h, d);
            }
            put_opt(&mut h, o.upstream_etag.as_ref().map(|v| v.as_bytes()));
            put_opt(&mut h, o.last_modified.as_ref().map(|v| v.as_bytes()));
            h.extend_from_slice(&(o.vary.len() as u32).to_le_bytes());
            for (name, value) in &o.vary {
                put_bytes(&mut h, name.as_str().as_bytes());
                put_opt(&mut h, value.as_ref().map(|v| v.as_bytes()));
            }
            h.extend_from_slice(&(o.headers.len() as u32).to_le_bytes());
            for (name, value) in &o.headers {
                put_bytes(&mut h, name.as_str().as_bytes());
                put_bytes(&mut h, value.as_bytes());
            }
            let mut flags = 0;
            if o.own_head {
                flags |= FLAG_OWN_HEAD;
            }
            if o.stylesheet {
                flags |= FLAG_STYLESHEET;
            }
            if l.must_revalidate {
                flags |= FLAG_MUST_REVALIDATE;
            }
            (0u8, flags)
        }
        Kept::Vary(names) => {
            h.extend_from_slice(&(names.len() as u32).to_le_bytes());
            for n in names {
                put_bytes(&mut h, n.as_str().as_bytes());
            }
            (1u8, 0u8)
        }
    };
    let mut out = Vec::with_capacity(PREFIX_LEN + h.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&h);
    out
}

/// The checksum that ends a file whose head and body are these.
pub fn trailer(head: &[u8], body: &[u8]) -> [u8; TRAILER_LEN] {
    let mut crc = crc32fast::Hasher::new();
    crc.update(head);
    crc.update(body);
    crc.finalize().to_le_bytes()
}

/// A whole record file in one buffer (tests and small records).
pub fn encode(record: &Record, body: &[u8]) -> Vec<u8> {
    let mut out = encode_head(record, body.len() as u64);
    let t = trailer(&out, body);
    out.extend_from_slice(body);
    out.extend_from_slice(&t);
    out
}

/// The lengths a prefix announces: (head length, body length), and so the whole file's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    pub head: u32,
    pub body: u64,
}

impl Lengths {
    /// The whole file's length.
    pub fn file(&self) -> u64 {
        (PREFIX_LEN + TRAILER_LEN) as u64 + u64::from(self.head) + self.body
    }
}

/// Reads the fixed prefix (the first [`PREFIX_LEN`] bytes of a file).
pub fn decode_prefix(prefix: &[u8]) -> Result<Lengths, RecordError> {
    if prefix.len() < PREFIX_LEN {
        return Err(RecordError::Length("shorter than its prefix"));
    }
    if &prefix[..8] != MAGIC {
        return Err(RecordError::Magic);
    }
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let head = u32::from_le_bytes(arr(&prefix[12..16]));
    if head > MAX_HEAD_LEN {
        return Err(RecordError::Length("head too long"));
    }
    let body = u64::from_le_bytes(arr(&prefix[16..24]));
    if body > u64::MAX / 2 {
        return Err(RecordError::Length("body too long"));
    }
    Ok(Lengths { head, body })
}

/// Decodes the prefix and head (the first `PREFIX_LEN + head` bytes of a file; more is
/// ignored), without the body or its checksum: what the start-up loader reads.
pub fn decode_head(bytes: &[u8]) -> Result<(Record, Lengths), RecordError> {
    decode_head_in(bytes, None, None)
}

/// [`decode_head`], with two shortcuts for a read on a hit: with `shared` (the buffer `bytes`
/// is), header values are slices of it instead of copies; with `expect`, the key is compared
/// with it as it stands in the file instead of being parsed (another is [`RecordError::Key`]).
fn decode_head_in(
    bytes: &[u8],
    shared: Option<&Bytes>,
    expect: Option<&CacheKey>,
) -> Result<(Record, Lengths), RecordError> {
    let lengths = decode_prefix(bytes)?;
    let end = PREFIX_LEN + lengths.head as usize;
    if bytes.len() < end {
        return Err(RecordError::Length("shorter than its head"));
    }
    let (kind, flags) = (bytes[10], bytes[11]);
    let mut r = Reader {
        rest: &bytes[PREFIX_LEN..end],
        shared,
    };
    let route = r.u64("route")?;
    let variant = r.u64("variant")?;
    let uri = r.bytes("uri")?;
    let uri: Uri = match expect {
        Some(k) if k.route == route && k.variant == variant && same_uri(&k.uri, uri) => {
            k.uri.clone()
        }
        Some(_) => return Err(RecordError::Key),
        None => std::str::from_utf8(uri)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(RecordError::Field("uri"))?,
    };
    let stored = r.time("stored")?;
    let keep = r.duration("keep")?;
    let kept = match kind {
        0 => {
            let status =
                StatusCode::from_u16(r.u16("status")?).map_err(|_| RecordError::Field("status"))?;
            let fresh_for = r.duration("fresh_for")?;
            let age = r.duration("age")?;
            let stale_while_revalidate = r.duration("stale_while_revalidate")?;
            let stale_if_error = r.duration("stale_if_error")?;
            let keep_for_revalidation = r.duration("keep")?;
            let upstream_etag = r.opt_value("etag")?;
            let last_modified = r.opt_value("last-modified")?;
            let n = r.u32("vary")?;
            let mut vary = Vec::new();
            for _ in 0..n {
                let name = r.name("vary name")?;
                vary.push((name, r.opt_value("vary value")?));
            }
            let n = r.u32("headers")?;
            let mut headers = HeaderMap::new();
            for _ in 0..n {
                let name = r.name("header name")?;
                let value = r.value("header value")?;
                headers.append(name, value);
            }
            Kept::Object(Box::new(Object {
                status,
                headers,
                stylesheet: flags & FLAG_STYLESHEET != 0,
                own_head: flags & FLAG_OWN_HEAD != 0,
                upstream_etag,
                last_modified,
                vary,
                lifetimes: Lifetimes {
                    fresh_for,
                    age,
                    stale_while_revalidate,
                    stale_if_error,
                    must_revalidate: flags & FLAG_MUST_REVALIDATE != 0,
                },
                keep_for_revalidation,
            }))
        }
        1 => {
            if lengths.body != 0 {
                return Err(RecordError::Length("a Vary list has no body"));
            }
            let n = r.u32("vary")?;
            let mut names = Vec::new();
            for _ in 0..n {
                names.push(r.name("vary name")?);
            }
            Kept::Vary(names)
        }
        _ => return Err(RecordError::Field("kind")),
    };
    if !r.rest.is_empty() {
        return Err(RecordError::Length("bytes left in the head"));
    }
    let key = CacheKey {
        route,
        uri,
        variant,
    };
    Ok((
        Record {
            key,
            stored,
            keep,
            kept,
        },
        lengths,
    ))
}

/// Decodes a whole file: head, body and checksum, nothing missing and nothing after. Returns
/// the record and the body's range in `bytes`.
pub fn decode(bytes: &[u8]) -> Result<(Record, std::ops::Range<usize>), RecordError> {
    decode_in(bytes, None, None)
}

/// [`decode`] of the file read for `key` on a hit: its key compared, not parsed (another is
/// [`RecordError::Key`]), and its header values slices of `bytes`, not copies.
pub fn decode_for(
    bytes: &Bytes,
    key: &CacheKey,
) -> Result<(Record, std::ops::Range<usize>), RecordError> {
    decode_in(bytes, Some(bytes), Some(key))
}

fn decode_in(
    bytes: &[u8],
    shared: Option<&Bytes>,
    expect: Option<&CacheKey>,
) -> Result<(Record, std::ops::Range<usize>), RecordError> {
    let (record, _) = decode_head_in(bytes, shared, expect)?;
    Ok((record, check(bytes)?))
}

/// The head read for `key` on a hit, from `head` (a file's first `PREFIX_LEN + head` bytes,
/// checked with [`check`]): its key compared, not parsed (another is [`RecordError::Key`]),
/// and its header values slices of `head`, not copies.
pub fn decode_head_for(head: &Bytes, key: &CacheKey) -> Result<Record, RecordError> {
    let (record, lengths) = decode_head_in(head, Some(head), Some(key))?;
    if head.len() != PREFIX_LEN + lengths.head as usize {
        return Err(RecordError::Length("not a head"));
    }
    Ok(record)
}

/// Checks a whole file without decoding its head: its prefix, its length (nothing missing and
/// nothing after) and its checksum. Returns the body's range in `bytes` (the head is all
/// before it).
pub fn check(bytes: &[u8]) -> Result<std::ops::Range<usize>, RecordError> {
    let lengths = decode_prefix(bytes)?;
    let want = lengths.file();
    let have = bytes.len() as u64;
    if have < want {
        return Err(RecordError::Length("truncated"));
    }
    if have > want {
        return Err(RecordError::Length("trailing bytes"));
    }
    let body_start = PREFIX_LEN + lengths.head as usize;
    let body_end = bytes.len() - TRAILER_LEN;
    let sum = trailer(&bytes[..body_start], &bytes[body_start..body_end]);
    if sum[..] != bytes[body_end..] {
        return Err(RecordError::Checksum);
    }
    Ok(body_start..body_end)
}

/// Whether `uri` is written as `bytes` (as [`encode_head`] writes it), compared piece by piece.
fn same_uri(uri: &Uri, bytes: &[u8]) -> bool {
    struct Same<'a>(&'a [u8]);
    impl fmt::Write for Same<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let rest = self.0.strip_prefix(s.as_bytes()).ok_or(fmt::Error)?;
            self.0 = rest;
            Ok(())
        }
    }
    let mut rest = Same(bytes);
    write!(rest, "{uri}").is_ok() && rest.0.is_empty()
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn put_duration(out: &mut Vec<u8>, d: Duration) {
    out.extend_from_slice(&d.as_secs().to_le_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_le_bytes());
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    // Before 1970 only with a broken clock: written as the epoch.
    put_duration(out, t.duration_since(UNIX_EPOCH).unwrap_or_default());
}

/// Reads fields off a head, each failure naming its field.
struct Reader<'a> {
    rest: &'a [u8],
    /// The buffer `rest` lies in, when header values may be slices of it.
    shared: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], RecordError> {
        if self.rest.len() < n {
            return Err(RecordError::Field(field));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn u16(&mut self, f: &'static str) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(arr(self.take(2, f)?)))
    }

    fn u32(&mut self, f: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(arr(self.take(4, f)?)))
    }

    fn u64(&mut self, f: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(arr(self.take(8, f)?)))
    }

    fn bytes(&mut self, f: &'static str) -> Result<&'a [u8], RecordError> {
        let n = self.u32(f)? as usize;
        self.take(n, f)
    }

    fn duration(&mut self, f: &'static str) -> Result<Duration, RecordError> {
        let secs = self.u64(f)?;
        let nanos = self.u32(f)?;
        if nanos >= 1_000_000_000 {
            return Err(RecordError::Field(f));
        }
        Ok(Duration::new(secs, nanos))
    }

    fn time(&mut self, f: &'static str) -> Result<SystemTime, RecordError> {
        UNIX_EPOCH
            .checked_add(self.duration(f)?)
            .ok_or(RecordError::Field(f))
    }

    fn name(&mut self, f: &'static str) -> Result<HeaderName, RecordError> {
        HeaderName::from_bytes(self.bytes(f)?).map_err(|_| RecordError::Field(f))
    }

    fn value(&mut self, f: &'static str) -> Result<HeaderValue, RecordError> {
        let b = self.bytes(f)?;
        match self.shared {
            Some(buf) => HeaderValue::from_maybe_shared(buf.slice_ref(b)),
            None => HeaderValue::from_bytes(b),
        }
        .map_err(|_| RecordError::Field(f))
    }

    fn opt_value(&mut self, f: &'static str) -> Result<Option<HeaderValue>, RecordError> {
        match self.take(1, f)?[0] {
            0 => Ok(None),
            1 => self.value(f).map(Some),
            _ => Err(RecordError::Field(f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::header;

    use super::*;

    fn object() -> Record {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        headers.append(header::VARY, HeaderValue::from_static("Accept"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"t-abc\""));
        Record {
            key: CacheKey {
                route: 0xdead_beef,
                uri: "https://tile.example/1/2/3.png?x=1".parse().unwrap(),
                variant: 42,
            },
            stored: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            keep: Duration::from_secs(86_400),
            kept: Kept::Object(Box::new(Object {
                status: StatusCode::OK,
                headers,
                stylesheet: false,
                own_head: true,
                upstream_etag: Some(HeaderValue::from_static("\"up-1\"")),
                last_modified: None,
                vary: vec![
                    (
                        header::ACCEPT_ENCODING,
                        Some(HeaderValue::from_static("br")),
                    ),
                    (header::ACCEPT, None),
                ],
                lifetimes: Lifetimes {
                    fresh_for: Duration::from_secs(3600),
                    age: Duration::from_millis(1500),
                    stale_while_revalidate: Duration::from_secs(60),
                    stale_if_error: Duration::ZERO,
                    must_revalidate: true,
                },
                keep_for_revalidation: Duration::from_secs(600),
            })),
        }
    }

    #[test]
    fn an_object_comes_back_as_it_went() {
        let r = object();
        let file = encode(&r, b"PNG bytes");
        let (back, body) = decode(&file).unwrap();
        assert_eq!(back, r);
        assert_eq!(&file[body], b"PNG bytes");
        // The head alone, with or without what follows it, says the same and the length.
        let (head, lengths) = decode_head(&file).unwrap();
        assert_eq!(head, r);
        assert_eq!(lengths.file(), file.len() as u64);
        assert_eq!(r.keep_until(), r.stored + Duration::from_secs(86_400));
    }

    #[test]
    fn a_vary_list_and_a_stylesheet_come_back_too() {
        let mut r = object();
        r.kept = Kept::Vary(vec![header::ACCEPT_ENCODING]);
        let file = encode(&r, b"");
        assert_eq!(decode(&file).unwrap().0, r);
        let mut r = object();
        if let Kept::Object(o) = &mut r.kept {
            o.stylesheet = true;
            o.own_head = false;
            o.lifetimes.must_revalidate = false;
            o.last_modified = Some(HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"));
        }
        assert_eq!(decode(&encode(&r, b"a{}")).unwrap().0, r);
    }

    #[test]
    fn a_read_for_its_key_decodes_the_same_and_refuses_another_key() {
        let r = object();
        let file = Bytes::from(encode(&r, b"PNG bytes"));
        let (back, body) = decode_for(&file, &r.key).unwrap();
        assert_eq!(back, r);
        assert_eq!(&file[body], b"PNG bytes");
        let mut others = Vec::new();
        for uri in [
            "https://tile.example/1/2/3.png?x=",
            "https://tile.example/1/2/3.png?x=12",
            "http://tile.example/1/2/3.png?x=1",
        ] {
            others.push(CacheKey {
                uri: uri.parse().unwrap(),
                ..r.key.clone()
            });
        }
        others.push(CacheKey {
            route: r.key.route + 1,
            ..r.key.clone()
        });
        others.push(CacheKey {
            variant: r.key.variant + 1,
            ..r.key.clone()
        });
        for other in others {
            assert_eq!(
                decode_for(&file, &other).unwrap_err(),
                RecordError::Key,
                "{other:?}"
            );
        }
        // Damage is refused as by a whole read.
        for i in 0..file.len() {
            let mut bad = file.to_vec();
            bad[i] ^= 0x40;
            assert!(
                decode_for(&Bytes::from(bad), &r.key).is_err(),
                "byte {i} flipped was accepted"
            );
        }
    }

    #[test]
    fn a_read_for_its_key_slices_its_values_from_the_file_buffer() {
        // The entry restored from them keeps them uncopied (Entry::restored): each must lie in
        // the file's own buffer, never in a buffer of someone else's.
        let r = object();
        let file = Bytes::from(encode(&r, b"PNG bytes"));
        let (back, _) = decode_for(&file, &r.key).unwrap();
        let Kept::Object(o) = back.kept else {
            panic!("an object")
        };
        let inside = |v: &HeaderValue| {
            let (p, f) = (v.as_bytes().as_ptr() as usize, file.as_ptr() as usize);
            p >= f && p + v.len() <= f + file.len()
        };
        let vary = o.vary.iter().filter_map(|(_, v)| v.as_ref());
        let values: Vec<&HeaderValue> = o
            .headers
            .values()
            .chain(o.upstream_etag.as_ref())
            .chain(vary)
            .collect();
        assert_eq!(values.len(), 4 + 1 + 1);
        for v in values {
            assert!(inside(v), "{v:?} is a copy");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let file = encode(&object(), b"body");
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i} flipped was accepted");
        }
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused() {
        let file = encode(&object(), b"body");
        for n in 0..file.len() {
            assert!(decode(&file[..n]).is_err(), "truncated to {n} accepted");
        }
        let mut long = file.clone();
        long.push(0);
        assert_eq!(
            decode(&long).unwrap_err(),
            RecordError::Length("trailing bytes")
        );
        assert_eq!(
            decode(&file[..file.len() - 1]).unwrap_err(),
            RecordError::Length("truncated")
        );
    }

    #[test]
    fn magic_version_and_checksum_are_named() {
        let file = encode(&object(), b"body");
        let mut bad = file.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad).unwrap_err(), RecordError::Magic);
        let mut bad = file.clone();
        bad[8] = 9;
        assert_eq!(decode(&bad).unwrap_err(), RecordError::Version(9));
        let mut bad = file.clone();
        let n = bad.len();
        bad[n - 6] ^= 1; // in the body
        assert_eq!(decode(&bad).unwrap_err(), RecordError::Checksum);
        let mut bad = file;
        bad[12..16].copy_from_slice(&(MAX_HEAD_LEN + 1).to_le_bytes());
        assert!(matches!(decode(&bad), Err(RecordError::Length(_))));
    }
}
