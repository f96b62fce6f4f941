//! Operator secrets (the admin token, pseudonym salts, Matomo's `token_auth`) in a type of
//! their own: `Debug` and `Display` print what the secret is (`<operator token_auth>`), never
//! anything computed from its bytes, so no log line, error, page, metric or probe can show one
//! by accident. The bytes come out only through [`Secret::expose`], so every use is a grep away.
//!
//! A leaf module: it uses nothing of the crate.

use std::fmt;

use zeroize::Zeroize;

/// A secret the operator configured (read from a `*_file`), or the placeholder that stands for
/// it where tamis shows what it would send (the probe).
#[derive(Clone)]
pub struct Secret {
    /// What the secret is, as its placeholder names it: `operator token_auth`.
    what: &'static str,
    bytes: Box<[u8]>,
    placeholder: bool,
}

impl Secret {
    /// A secret of kind `what` (e.g. `"admin token"`) holding `bytes`.
    pub fn new(what: &'static str, bytes: impl Into<Vec<u8>>) -> Secret {
        Secret {
            what,
            bytes: bytes.into().into_boxed_slice(),
            placeholder: false,
        }
    }

    /// The stand-in shown where this secret would go: `<what>` as its bytes, so a dry run
    /// given it writes the placeholder exactly where the real path writes the secret.
    pub fn placeholder(&self) -> Secret {
        Secret {
            what: self.what,
            bytes: format!("<{}>", self.what).into_bytes().into_boxed_slice(),
            placeholder: true,
        }
    }

    /// Whether this is a [`placeholder`](Self::placeholder) rather than the secret itself.
    pub fn is_placeholder(&self) -> bool {
        self.placeholder
    }

    /// What the secret is (`operator token_auth`).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The secret's bytes: for the one place that must send or key with them.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether `given` is this secret, in a time that does not depend on where the two differ
    /// (only on whether their lengths do), so an answer's timing gives no prefix away.
    pub fn matches(&self, given: &[u8]) -> bool {
        if given.len() != self.bytes.len() {
            return false;
        }
        let diff = given
            .iter()
            .zip(self.bytes.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // Keeps the optimiser from turning the fold into an early exit.
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.what)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.what)
    }
}

impl Drop for Secret {
    // zeroize is already in the build (rustls uses it): a dropped config leaves no copy of the
    // secret in freed memory. Copies made on the way out (a request body) are not covered.
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cr3tOperatorToken0123456789";

    #[test]
    fn debug_and_display_name_the_secret_and_never_show_it() {
        let s = Secret::new("operator token_auth", TOKEN);
        for shown in [
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{s}"),
            format!("{:?}", Some(&s)),
            format!("{:?}", vec![s.clone()]),
        ] {
            assert!(!shown.contains(TOKEN), "{shown}");
            assert!(shown.contains("<operator token_auth>"), "{shown}");
        }
        assert_eq!(s.expose(), TOKEN.as_bytes());
    }

    #[test]
    fn the_placeholder_holds_its_name_and_not_the_secret() {
        let s = Secret::new("operator token_auth", TOKEN);
        let p = s.placeholder();
        assert!(p.is_placeholder() && !s.is_placeholder());
        assert_eq!(p.expose(), b"<operator token_auth>");
        assert_eq!(p.what(), s.what());
    }

    #[test]
    fn matches_only_the_same_bytes() {
        let s = Secret::new("admin token", TOKEN);
        assert!(s.matches(TOKEN.as_bytes()));
        assert!(!s.matches(b""));
        assert!(!s.matches(&TOKEN.as_bytes()[..TOKEN.len() - 1]));
        let mut wrong = TOKEN.as_bytes().to_vec();
        wrong[TOKEN.len() - 1] ^= 1;
        assert!(!s.matches(&wrong));
    }
}
