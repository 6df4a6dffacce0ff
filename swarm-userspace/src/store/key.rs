//! The keys the tables' B-trees hold: object IDs and name keys.
//!
//! A key of up to [`INLINE`] bytes (every ID from
//! [`new_id`](super::new_id) and most names) lives inside the B-tree entry.
//! So comparing two keys reads no other memory, building one to look
//! something up allocates nothing, and copying or freeing a B-tree leaf (what
//! every write to a persistent table does on its path) touches no reference
//! counts. Longer keys are shared behind an `Arc`. Ordering, equality and
//! hashing are those of the key's bytes, as for `str`.
//!
//! This module only holds strings; it never interprets them.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Longest key kept inline: with its length and the variant's tag the key
/// is 32 bytes, and IDs (25 bytes) fit.
pub(super) const INLINE: usize = 30;

/// See the module docs.
#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl Key {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Shared(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Inline bytes are always a whole `&str` (see `From<&str>`), so
            // this never falls back to "".
            Key::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Key::Shared(s) => s,
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Key::Inline { len, bytes }
            }
            _ => Key::Shared(Arc::from(s)),
        }
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key::from(s.as_str())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_inline_and_a_key_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), 32);
        let id = crate::store::new_id();
        assert!(matches!(Key::from(id.as_str()), Key::Inline { .. }));
        let long = "x".repeat(INLINE + 1);
        let k = Key::from(long.as_str());
        assert!(matches!(k, Key::Shared(_)));
        assert_eq!(k.as_str(), long);
    }

    proptest! {
        /// Keys order, compare and read back as their strings do, whichever
        /// way each is stored: the tables' range scans rely on it.
        #[test]
        fn keys_behave_as_their_strings(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let (ka, kb) = (Key::from(a.as_str()), Key::from(b.as_str()));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(ka.as_str(), a.as_str());
            prop_assert_eq!(kb.as_str(), b.as_str());
        }
    }
}
