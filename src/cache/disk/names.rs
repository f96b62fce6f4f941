//! How the disk tier names its files: `dir/a/bc/<key hash>.<generation>`, the key hash being
//! 128 bits of a SHA-256 of the key's parts. Pure functions of a key, used by the tier, the
//! decoded heads it keeps and the start-up loader alike.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::super::key::CacheKey;

/// The part of a key's SHA-256 its file name is made of.
pub(super) type KeyDigest = [u8; 16];

/// The hex name of a key (a SHA-256 of its parts, 128 bits kept).
pub(super) fn key_name(key: &CacheKey) -> String {
    digest_name(&key_digest(key))
}

/// [`key_digest`] in hex: the file name's first part.
pub(super) fn digest_name(digest: &KeyDigest) -> String {
    let mut name = String::with_capacity(32);
    push_hex(&mut name, digest);
    name
}

fn push_hex(out: &mut String, digest: &KeyDigest) {
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// The first 128 bits of the SHA-256 of a key's parts, which name its files.
pub(super) fn key_digest(key: &CacheKey) -> KeyDigest {
    /// Hashes what is written to it: the URI as `to_string` would spell it, with no string.
    struct Hashing(Sha256);
    impl std::fmt::Write for Hashing {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    h.0.update(key.route.to_le_bytes());
    h.0.update(key.variant.to_le_bytes());
    // Writing to a hasher cannot fail.
    let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{}", key.uri));
    let d = h.0.finalize();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&d[..16]);
    digest
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The path of `key`'s file of `generation` (the tier builds it from the digest it keeps).
#[cfg(test)]
pub(super) fn file_path(dir: &Path, key: &CacheKey, generation: u64) -> PathBuf {
    digest_path(dir, &key_digest(key), generation)
}

/// `dir/a/bc/<key hash>.<generation>` for the key whose [`key_digest`] is `digest`: nginx's
/// `levels=1:2`, 4 096 directories at most (two levels of 256 made one directory, a 4 KiB
/// block, per object or so: 38 MiB for 10 000 tiles).
pub(super) fn digest_path(dir: &Path, digest: &KeyDigest, generation: u64) -> PathBuf {
    // Sized for the generation too: no reallocation on the way.
    let mut name = String::with_capacity(32 + 1 + 16);
    push_hex(&mut name, digest);
    let mut path = PathBuf::with_capacity(dir.as_os_str().len() + 6 + 49);
    path.push(dir);
    path.push(&name[..1]);
    path.push(&name[1..3]);
    name.push('.');
    for shift in (0..16).rev() {
        name.push(HEX[(generation >> (shift * 4)) as usize & 15] as char);
    }
    path.push(name);
    path
}

/// Room for a file's path on the stack: a `disk_dir` of up to 200 bytes, then the 55 of
/// `/a/bc/<32 hex digits>.<16 hex digits>`.
pub(super) const PATH_ROOM: usize = 256;

/// [`digest_path`] spelled in `room`, so that a read opens its file without allocating (std
/// makes the C string on the stack too); `None` when `dir` is too long for it, or empty.
pub(super) fn digest_path_in<'r>(
    room: &'r mut [u8; PATH_ROOM],
    dir: &Path,
    digest: &KeyDigest,
    generation: u64,
) -> Option<&'r Path> {
    use std::os::unix::ffi::OsStrExt;
    let dir = dir.as_os_str().as_bytes();
    if dir.is_empty() {
        return None;
    }
    // As `PathBuf::push` joins: one separator, none added after one already there.
    let dir = dir.strip_suffix(b"/").unwrap_or(dir);
    let mut hex = [0u8; 32];
    for (i, b) in digest.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    let mut gen = [0u8; 16];
    for (i, g) in gen.iter_mut().enumerate() {
        *g = HEX[(generation >> ((15 - i) * 4)) as usize & 15];
    }
    let parts: [&[u8]; 8] = [dir, b"/", &hex[..1], b"/", &hex[1..3], b"/", &hex, b"."];
    let mut at = 0;
    for part in parts.into_iter().chain([&gen[..]]) {
        room.get_mut(at..at + part.len())?.copy_from_slice(part);
        at += part.len();
    }
    Some(Path::new(std::ffi::OsStr::from_bytes(&room[..at])))
}

/// The directory the files of the key named `name` go in.
pub(super) fn leaf_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(&name[..1]).join(&name[1..3])
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn file_names_spread_over_two_levels_and_differ_by_version() {
        let k = CacheKey::primary(7, "https://t.example/1/2/3.png".parse().unwrap());
        let a = file_path(Path::new("/c"), &k, 1);
        let b = file_path(Path::new("/c"), &k, 2);
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        let name = key_name(&k);
        assert_eq!(
            s,
            format!("/c/{}/{}/{name}.0000000000000001", &name[..1], &name[1..3])
        );
        assert_ne!(
            key_name(&k),
            key_name(&CacheKey::primary(8, k.uri.clone())),
            "the route is part of the name"
        );
    }

    /// Keys of every kind: the largest and smallest route and variant, a port, a query.
    pub(in crate::cache::disk) fn sample_keys() -> Vec<CacheKey> {
        [
            (7, "https://t.example/1/2/3.png", 0),
            (u64::MAX, "http://a.example:8080/x?y=1&z=%20", 42),
            (0, "https://cdn.example/", u64::MAX),
        ]
        .into_iter()
        .map(|(route, uri, variant)| CacheKey {
            route,
            uri: uri.parse().unwrap(),
            variant,
        })
        .collect()
    }

    #[test]
    fn key_names_are_those_earlier_builds_gave_their_files() {
        // The name as first written: SHA-256 of the parts and the URI's string, hex.
        let earlier = |key: &CacheKey| {
            let mut h = Sha256::new();
            h.update(key.route.to_le_bytes());
            h.update(key.variant.to_le_bytes());
            h.update(key.uri.to_string().as_bytes());
            let d = h.finalize();
            d[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        for k in sample_keys() {
            assert_eq!(key_name(&k), earlier(&k));
            let g = 0x0123_4567_89ab_cdef;
            assert_eq!(
                file_path(Path::new("/c/"), &k, g),
                Path::new("/c")
                    .join(&earlier(&k)[..1])
                    .join(&earlier(&k)[1..3])
                    .join(format!("{}.{g:016x}", earlier(&k)))
            );
        }
    }

    #[test]
    fn a_path_spelled_on_the_stack_is_the_path_of_the_file() {
        for dir in ["/c", "/c/", "/", "/c//", "rel/dir", "/var/cache/tamis"] {
            for k in sample_keys() {
                let digest = key_digest(&k);
                for g in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX] {
                    let mut room = [0u8; PATH_ROOM];
                    let on_stack = digest_path_in(&mut room, Path::new(dir), &digest, g);
                    // The very bytes, not only an equal path (which ignores doubled slashes).
                    let built = digest_path(Path::new(dir), &digest, g);
                    assert_eq!(on_stack.map(Path::as_os_str), Some(built.as_os_str()));
                }
            }
        }
        // Too long for the room, or no directory at all: the caller builds it as before.
        let long = format!("/{}", "d".repeat(PATH_ROOM - 55));
        let mut room = [0u8; PATH_ROOM];
        assert!(digest_path_in(&mut room, Path::new(&long), &[0; 16], 1).is_none());
        let fits = &long[..long.len() - 1];
        assert!(digest_path_in(&mut room, Path::new(fits), &[0; 16], 1).is_some());
        assert!(digest_path_in(&mut room, Path::new(""), &[0; 16], 1).is_none());
    }
}
