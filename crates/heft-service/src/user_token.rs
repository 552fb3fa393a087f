//! User tokens: JWTs signed with Ed25519 (`alg` EdDSA), issued by the users
//! service at login, verified by both services (docs/access.md).
//!
//! `jsonwebtoken` parses and validates (header, `exp`, `aud`, `iss`, leeway);
//! the signatures are ed25519-dalek's, through a crypto provider of our own
//! that knows EdDSA and nothing else. Whatever a token's header says, no
//! other algorithm can verify it (no `none`, no key confusion), and no RSA,
//! HMAC or ECDSA code is in the build.

use std::{collections::HashMap, sync::Once};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::ErrorKind,
    signature,
};
use rand::RngCore as _;
use uuid::Uuid;

pub const ISSUER: &str = "heft-users";
pub const AUDIENCE: &str = "heft";
/// Clock difference tolerated between the services, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// The claims of a user token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

impl Claims {
    pub fn user_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.sub).ok()
    }

    pub fn issued_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.iat, 0).unwrap_or_default()
    }
}

/// A key that signs user tokens: its id and its 32-byte Ed25519 seed.
#[derive(Clone)]
pub struct TokenSigningKey {
    pub kid: String,
    seed: [u8; 32],
}

impl std::fmt::Debug for TokenSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenSigningKey {
    /// A fresh key, its id random too.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let mut kid = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut kid);
        Self {
            kid: base64url(&kid),
            seed,
        }
    }

    pub fn from_stored(kid: String, seed: &[u8]) -> Option<Self> {
        Some(Self {
            kid,
            seed: seed.try_into().ok()?,
        })
    }

    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public(&self) -> TokenPublicKey {
        TokenPublicKey {
            kid: self.kid.clone(),
            x: SigningKey::from_bytes(&self.seed)
                .verifying_key()
                .to_bytes(),
        }
    }

    /// The token for `user_id`, valid from `now` for `ttl`.
    pub fn issue(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        install_provider();
        let expire_time = now + chrono::Duration::from_std(ttl)?;
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: user_id.to_string(),
            iat: now.timestamp(),
            exp: expire_time.timestamp(),
            jti: Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.seed))?;
        Ok((token, expire_time))
    }
}

/// A public key that verifies user tokens: `kid` and the 32-byte key (`x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPublicKey {
    pub kid: String,
    pub x: [u8; 32],
}

impl TokenPublicKey {
    /// `x` as a JWK carries it: base64url without padding.
    pub fn x_base64url(&self) -> String {
        base64url(&self.x)
    }

    pub fn from_jwk(kid: &str, kty: &str, crv: &str, x: &str) -> Option<Self> {
        if kty != "OKP" || crv != "Ed25519" {
            return None;
        }
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .ok()?;
        Some(Self {
            kid: kid.to_owned(),
            x: x.try_into().ok()?,
        })
    }
}

/// Why a token is refused; the caller sees only UNAUTHENTICATED.
pub type Refusal = &'static str;

/// Checks a token's signature (by the key its `kid` names), `alg`, `iss`,
/// `aud` and `exp` (with [`LEEWAY_SECS`]), and returns its claims.
pub fn verify(token: &str, keys: &HashMap<String, TokenPublicKey>) -> Result<Claims, Refusal> {
    install_provider();
    let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
    if header.alg != Algorithm::EdDSA {
        return Err("algorithm is not EdDSA");
    }
    let kid = header.kid.ok_or("no kid in the header")?;
    let key = keys.get(&kid).ok_or(UNKNOWN_KID)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.algorithms = vec![Algorithm::EdDSA];
    validation.leeway = LEEWAY_SECS;
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub", "jti"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_ed_der(&key.x), &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidIssuer => "wrong issuer",
                _ => "invalid token",
            })?;
    Ok(data.claims)
}

/// A token that verified: whose it is and when it was issued and expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub user_id: Uuid,
    pub iat: i64,
    pub exp: i64,
}

/// Tokens already verified, so that a client calling with the same token
/// pays for its signature once, not on every call. A hit is re-checked for
/// expiry only; the cache is bounded (cleared whole when full).
#[derive(Debug, Default)]
pub struct VerifiedTokens(std::sync::Mutex<HashMap<String, Verified>>);

const VERIFIED_CAPACITY: usize = 10_000;

impl VerifiedTokens {
    pub fn verify(
        &self,
        token: &str,
        keys: &HashMap<String, TokenPublicKey>,
    ) -> Result<Verified, Refusal> {
        let now = Utc::now().timestamp();
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(verified) = seen.get(token) {
            if verified.exp + LEEWAY_SECS as i64 > now {
                return Ok(*verified);
            }
            seen.remove(token);
            return Err("expired");
        }
        drop(seen);
        let claims = verify(token, keys)?;
        let verified = Verified {
            user_id: claims.user_id().ok_or("malformed sub")?,
            iat: claims.iat,
            exp: claims.exp,
        };
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.len() >= VERIFIED_CAPACITY {
            seen.clear();
        }
        seen.insert(token.to_owned(), verified);
        Ok(verified)
    }
}

/// What [`verify`] answers for a `kid` it has no key for (the entries
/// service then fetches the keys again).
pub const UNKNOWN_KID: Refusal = "unknown key id";

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// jsonwebtoken's process-wide crypto: EdDSA with ed25519-dalek, keys as
/// raw bytes (a 32-byte seed to sign, a 32-byte public key to verify).
static EDDSA_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: |algorithm, key| match algorithm {
        Algorithm::EdDSA => {
            let seed: [u8; 32] = key
                .as_bytes()
                .try_into()
                .map_err(|_| ErrorKind::InvalidEddsaKey)?;
            Ok(Box::new(EdDsaSigner(SigningKey::from_bytes(&seed))))
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    },
    verifier_factory: |algorithm, key| match algorithm {
        Algorithm::EdDSA => {
            let public: [u8; 32] = key
                .try_get_as_bytes()?
                .try_into()
                .map_err(|_| ErrorKind::InvalidEddsaKey)?;
            let key = VerifyingKey::from_bytes(&public).map_err(|_| ErrorKind::InvalidEddsaKey)?;
            Ok(Box::new(EdDsaVerifier(key)))
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    },
    key_utils: KeyUtils::new_unimplemented(),
};

fn install_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err: a provider is installed already; ours is the only one this
        // build has (no jsonwebtoken crypto feature is enabled).
        let _ = EDDSA_ONLY.install_default();
    });
}

struct EdDsaSigner(SigningKey);

impl signature::Signer<Vec<u8>> for EdDsaSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }
}

impl JwtSigner for EdDsaSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdDsaVerifier(VerifyingKey);

impl signature::Verifier<Vec<u8>> for EdDsaVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let signature = Signature::from_slice(signature)?;
        // Strict: no malleable or small-order signatures.
        self.0.verify_strict(message, &signature)
    }
}

impl JwtVerifier for EdDsaVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(key: &TokenSigningKey) -> HashMap<String, TokenPublicKey> {
        HashMap::from([(key.kid.clone(), key.public())])
    }

    #[test]
    fn a_token_verifies_with_its_public_key_only() {
        let key = TokenSigningKey::generate();
        let user = Uuid::new_v4();
        let (token, expire_time) = key
            .issue(user, Utc::now(), std::time::Duration::from_secs(900))
            .expect("issue");
        assert!(expire_time > Utc::now());
        let claims = verify(&token, &keys(&key)).expect("valid");
        assert_eq!(claims.user_id(), Some(user));
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (ISSUER, AUDIENCE)
        );

        let other = TokenSigningKey::generate();
        let mut impostor = keys(&other);
        impostor.insert(key.kid.clone(), other.public());
        assert_eq!(verify(&token, &impostor), Err("bad signature"));
        assert_eq!(verify(&token, &keys(&other)), Err(UNKNOWN_KID));
    }

    #[test]
    fn tampered_expired_and_unsigned_tokens_are_refused() {
        let key = TokenSigningKey::generate();
        let user = Uuid::new_v4();
        let (token, _) = key
            .issue(user, Utc::now(), std::time::Duration::from_secs(900))
            .expect("issue");
        let parts: Vec<&str> = token.split('.').collect();
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;

        // Another user's id in the claims, the signature kept.
        let claims = String::from_utf8(engine.decode(parts[1]).expect("b64")).expect("utf8");
        let forged = claims.replace(&user.to_string(), &Uuid::new_v4().to_string());
        let tampered = format!("{}.{}.{}", parts[0], engine.encode(forged), parts[2]);
        assert_eq!(verify(&tampered, &keys(&key)), Err("bad signature"));

        // alg none, no signature.
        let none = engine.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid));
        assert!(verify(&format!("{none}.{}.", parts[1]), &keys(&key)).is_err());
        // alg HS256 with the public key as the HMAC secret (key confusion).
        let hs = engine.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, key.kid));
        assert!(verify(&format!("{hs}.{}.{}", parts[1], parts[2]), &keys(&key)).is_err());

        let long_ago = Utc::now() - chrono::Duration::hours(2);
        let (expired, _) = key
            .issue(user, long_ago, std::time::Duration::from_secs(900))
            .expect("issue");
        assert_eq!(verify(&expired, &keys(&key)), Err("expired"));
    }
}
