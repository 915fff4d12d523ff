//! Per-purpose keys derived from the master secret (HKDF-SHA256), and the small
//! primitives built on them: signing, random secrets, hashing of tokens at rest.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// What a derived key is used for; each purpose gets an independent key.
#[derive(Debug, Clone, Copy)]
pub enum KeyPurpose {
    CookieSigning,
    Csrf,
    SecretEncryption,
    FlowState,
}

impl KeyPurpose {
    fn info(self) -> &'static [u8] {
        match self {
            KeyPurpose::CookieSigning => b"latchkey/v1/cookie-signing",
            KeyPurpose::Csrf => b"latchkey/v1/csrf",
            KeyPurpose::SecretEncryption => b"latchkey/v1/secret-encryption",
            KeyPurpose::FlowState => b"latchkey/v1/flow-state",
        }
    }
}

/// A 256-bit key for one purpose.
#[derive(Clone)]
pub struct DerivedKey([u8; 32]);

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKey(..)")
    }
}

impl DerivedKey {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// HMAC-SHA256 of `data`, base64url.
    pub fn sign(&self, data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(data))
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Constant-time check of a signature produced by [`DerivedKey::sign`].
    pub fn verify(&self, data: &[u8], signature: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(signature) {
            Ok(sig) => sig.ct_eq(&self.mac(data)).into(),
            Err(_) => false,
        }
    }

    /// An independent key for a narrower purpose (HMAC of the label), so that one purpose's
    /// signatures never verify for another.
    pub fn subkey(&self, label: &[u8]) -> DerivedKey {
        DerivedKey(self.mac(label))
    }

    /// `value.signature`, for cookies.
    pub fn seal(&self, value: &str) -> String {
        format!("{value}.{}", self.sign(value.as_bytes()))
    }

    /// The value of a string made by [`DerivedKey::seal`], if the signature holds.
    pub fn unseal<'a>(&self, sealed: &'a str) -> Option<&'a str> {
        let (value, sig) = sealed.rsplit_once('.')?;
        self.verify(value.as_bytes(), sig).then_some(value)
    }
}

/// The master secret and everything derived from it.
#[derive(Clone, Debug)]
pub struct Keys {
    pub cookie: DerivedKey,
    pub csrf: DerivedKey,
    pub encryption: DerivedKey,
    pub flow_state: DerivedKey,
}

impl Keys {
    pub fn derive(master_secret: &[u8]) -> Keys {
        let hk = Hkdf::<Sha256>::new(Some(b"latchkey"), master_secret);
        let derive = |purpose: KeyPurpose| {
            let mut out = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
            hk.expand(purpose.info(), &mut out).unwrap_or_else(|_| unreachable!());
            DerivedKey(out)
        };
        Keys {
            cookie: derive(KeyPurpose::CookieSigning),
            csrf: derive(KeyPurpose::Csrf),
            encryption: derive(KeyPurpose::SecretEncryption),
            flow_state: derive(KeyPurpose::FlowState),
        }
    }
}

/// A fresh random secret of `bytes` bytes, base64url.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// How secrets (tokens, session ids) are kept at rest: SHA-256, hex. They are
/// 256-bit random values, so a fast hash is enough to make a stolen table useless.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_get_different_keys() {
        let k = Keys::derive(b"master");
        assert_ne!(k.cookie.bytes(), k.csrf.bytes());
        assert_ne!(k.csrf.bytes(), k.flow_state.bytes());
        assert_eq!(Keys::derive(b"master").cookie.bytes(), k.cookie.bytes());
    }

    #[test]
    fn seal_roundtrip_and_tamper() {
        let k = Keys::derive(b"master").cookie;
        let sealed = k.seal("abc");
        assert_eq!(k.unseal(&sealed), Some("abc"));
        assert_eq!(k.unseal(&sealed.replace("abc", "abd")), None);
        assert_eq!(k.unseal("abc"), None);
        assert_eq!(Keys::derive(b"other").cookie.unseal(&sealed), None);
    }
}
