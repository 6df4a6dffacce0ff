//! Object identifiers.

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Length of an ID from [`new_id`].
pub const ID_LEN: usize = 25;

/// A new random object ID: 128 random bits written as 25 lowercase base36
/// digits, zero-padded (as swarmkit's `identity.NewID`). 36^25 > 2^128, so
/// every value fits and all IDs have the same length.
///
/// Only the proposing manager calls this; applying a batch never does, so
/// replicas agree on every ID.
#[must_use]
pub fn new_id() -> String {
    let mut n: u128 = rand::random();
    let mut digits = [b'0'; ID_LEN];
    for d in digits.iter_mut().rev() {
        // n % 36 < 36, so the cast and the index are in range.
        *d = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_lowercase_base36_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = new_id();
            assert_eq!(id.len(), ID_LEN);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
                "{id}"
            );
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn max_value_fits() {
        // u128::MAX in base36 has 25 digits; check the arithmetic bound.
        let mut n = u128::MAX;
        let mut len = 0;
        while n > 0 {
            n /= 36;
            len += 1;
        }
        assert_eq!(len, ID_LEN);
    }
}
