//! A keyed hash (HMAC-SHA256) for values that must be compared but not
//! stored in the clear, such as the email a login throttle counts.

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Clone)]
pub struct KeyedHash {
    key: Vec<u8>,
}

impl std::fmt::Debug for KeyedHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHash(***)")
    }
}

impl KeyedHash {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    pub fn digest(&self, data: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_key_and_data() {
        let one = KeyedHash::new(vec![1; 32]);
        let two = KeyedHash::new(vec![2; 32]);
        assert_eq!(
            one.digest(b"ada@example.com"),
            one.digest(b"ada@example.com")
        );
        assert_ne!(
            one.digest(b"ada@example.com"),
            one.digest(b"bob@example.com")
        );
        assert_ne!(
            one.digest(b"ada@example.com"),
            two.digest(b"ada@example.com")
        );
        assert_eq!(format!("{one:?}"), "KeyedHash(***)");
    }
}
