//! Page sizes (AIP-158) and opaque, tamper-evident page tokens.
//!
//! A token is `base64url(json || HMAC-SHA256(key, json))`. The key lives in the
//! service's database, so every replica on that database accepts every other
//! replica's tokens. A token carries a fingerprint of the call's filters and
//! an expiry: reusing it with other filters, editing it, or keeping it for
//! more than a day is `INVALID_ARGUMENT`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::error::InvalidRequest;

type HmacSha256 = Hmac<Sha256>;

const MAC_LEN: usize = 32;
const TOKEN_LIFETIME_SECS: i64 = 24 * 60 * 60;
/// Bounds the work a hostile token can cause before it is rejected.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Length of a freshly generated signing key.
pub const KEY_LEN: usize = 32;

/// Resolves `page_size` per AIP-158: 0 means `default`, above `max` is
/// coerced down, negative is invalid.
pub fn page_size(requested: i32, default: u32, max: u32) -> Result<u32, InvalidRequest> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(InvalidRequest::single("page_size", "must not be negative")),
        n => Ok(u32::try_from(n).map_or(max, |n| n.min(max))),
    }
}

/// A random signing key, for a database that has none yet.
pub fn generate_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0_u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

#[derive(Serialize, Deserialize)]
struct Envelope<C> {
    /// What the token pages through, e.g. "users".
    scope: String,
    /// SHA-256 of the filters of the call that issued the token.
    filter: String,
    /// Unix seconds after which the token is stale.
    expires: i64,
    cursor: C,
}

#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(***)")
    }
}

impl PageTokens {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// A token for the page after `cursor` of a call with these filters.
    pub fn encode<C: Serialize>(&self, scope: &str, filter: &impl Serialize, cursor: C) -> String {
        self.seal(
            scope,
            filter,
            cursor,
            Utc::now().timestamp() + TOKEN_LIFETIME_SECS,
        )
    }

    /// A token carrying `cursor` for calls with these filters, stale after
    /// `expires` (Unix seconds).
    pub fn seal<C: Serialize>(
        &self,
        scope: &str,
        filter: &impl Serialize,
        cursor: C,
        expires: i64,
    ) -> String {
        let envelope = Envelope {
            scope: scope.to_owned(),
            filter: fingerprint(filter),
            expires,
            cursor,
        };
        let mut bytes =
            serde_json::to_vec(&envelope).unwrap_or_else(|_| unreachable!("cursor is plain data"));
        let mut mac = self.mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Ends a page fetched with one row more than `page_size`: drops the
    /// extra row and returns the token of the next page (empty on the last).
    pub fn finish_page<T, C: Serialize>(
        &self,
        scope: &str,
        filter: &impl Serialize,
        rows: &mut Vec<T>,
        page_size: u32,
        cursor_after: impl Fn(&T) -> C,
    ) -> String {
        let page_size = page_size as usize;
        if rows.len() <= page_size {
            return String::new();
        }
        rows.truncate(page_size);
        rows.last()
            .map(|last| self.encode(scope, filter, cursor_after(last)))
            .unwrap_or_default()
    }

    /// The cursor in `token`, if this service issued it for a call with the
    /// same filters, unchanged and recently. An empty token is the first page.
    pub fn decode<C: DeserializeOwned>(
        &self,
        scope: &str,
        filter: &impl Serialize,
        token: &str,
    ) -> Result<Option<C>, InvalidRequest> {
        if token.is_empty() {
            return Ok(None);
        }
        self.open(scope, filter, token)
            .map(Some)
            .map_err(|refusal| {
                InvalidRequest::single(
                    "page_token",
                    match refusal {
                        TokenRefusal::Invalid(why) => why,
                        TokenRefusal::Expired => "has expired; start again without a page token",
                    },
                )
            })
    }

    /// The cursor in a non-empty `token` sealed by [`PageTokens::seal`] for
    /// `scope` and these filters, or why it is refused.
    pub fn open<C: DeserializeOwned>(
        &self,
        scope: &str,
        filter: &impl Serialize,
        token: &str,
    ) -> Result<C, TokenRefusal> {
        const NOT_OURS: TokenRefusal =
            TokenRefusal::Invalid("is not a token issued by this service");
        if token.len() > MAX_TOKEN_LEN {
            return Err(NOT_OURS);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| NOT_OURS)?;
        let Some(split) = bytes.len().checked_sub(MAC_LEN) else {
            return Err(NOT_OURS);
        };
        let (payload, signature) = bytes.split_at(split);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_slice(signature).map_err(|_| {
            TokenRefusal::Invalid("has been tampered with or was not issued by this service")
        })?;
        let envelope: Envelope<C> = serde_json::from_slice(payload).map_err(|_| NOT_OURS)?;
        if envelope.scope != scope {
            return Err(TokenRefusal::Invalid("belongs to another method"));
        }
        if envelope.filter != fingerprint(filter) {
            return Err(TokenRefusal::Invalid(
                "was issued for a call with other filters; start again without a token",
            ));
        }
        if envelope.expires < Utc::now().timestamp() {
            return Err(TokenRefusal::Expired);
        }
        Ok(envelope.cursor)
    }
}

/// Why a token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Forged, edited, garbled, or for another method or other filters.
    Invalid(&'static str),
    /// Genuine, but past its expiry.
    Expired,
}

fn fingerprint(filter: &impl Serialize) -> String {
    let json =
        serde_json::to_vec(filter).unwrap_or_else(|_| unreachable!("filters are plain data"));
    let digest = Sha256::digest(json);
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> PageTokens {
        PageTokens::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn round_trips_a_cursor_for_the_same_filters() {
        let token = codec().encode("users", &("a", 1), 42_u64);
        let cursor: Option<u64> = codec().decode("users", &("a", 1), &token).expect("valid");
        assert_eq!(cursor, Some(42));
    }

    #[test]
    fn another_replica_with_the_same_key_accepts_the_token() {
        let token = codec().encode("users", &(), 7_u64);
        let other = PageTokens::new(codec().key.clone());
        assert_eq!(
            other.decode::<u64>("users", &(), &token).expect("valid"),
            Some(7)
        );
    }

    #[test]
    fn rejects_edited_tokens() {
        let token = codec().encode("users", &(), 7_u64);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        let json_end = bytes.len() - MAC_LEN;
        let edited = String::from_utf8(bytes[..json_end].to_vec())
            .expect("json")
            .replace("\"cursor\":7", "\"cursor\":8");
        bytes.splice(..json_end, edited.into_bytes());
        let forged = URL_SAFE_NO_PAD.encode(bytes);
        assert!(codec().decode::<u64>("users", &(), &forged).is_err());
        assert!(codec().decode::<u64>("users", &(), "garbage!").is_err());
    }

    #[test]
    fn rejects_tokens_of_other_filters_scopes_and_keys() {
        let token = codec().encode("entries", &("user-a",), 1_u64);
        assert!(
            codec()
                .decode::<u64>("entries", &("user-b",), &token)
                .is_err()
        );
        assert!(
            codec()
                .decode::<u64>("users", &("user-a",), &token)
                .is_err()
        );
        let other_key = PageTokens::new(vec![9; KEY_LEN]);
        assert!(
            other_key
                .decode::<u64>("entries", &("user-a",), &token)
                .is_err()
        );
    }

    #[test]
    fn page_size_follows_aip_158() {
        assert_eq!(page_size(0, 50, 1000).expect("default"), 50);
        assert_eq!(page_size(7, 50, 1000).expect("as asked"), 7);
        assert_eq!(page_size(5000, 50, 1000).expect("coerced"), 1000);
        assert!(page_size(-1, 50, 1000).is_err());
    }
}
