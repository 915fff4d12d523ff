//! The instance's token signing keys: ES256 (P-256) signs forward-auth JWTs and OIDC tokens of
//! providers that choose it; RS256 (RSA 2048) is the OIDC default. Each is generated on first
//! use, kept encrypted at rest in the settings store (AES-256-GCM under the key derived for
//! secret encryption), decoded once per process.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::OnceCell;

use crate::error::{CoreError, Result};
use crate::keys::DerivedKey;
use crate::store::Store;

/// Settings key holding the encrypted key.
const SETTING: &str = "signing_key_es256";
/// Binds the ciphertext to its purpose: a blob encrypted for something else does not open here.
const AAD: &[u8] = b"latchkey/v1/signing-key-es256";

/// Settings key and AAD of the RS256 key (PKCS#1 DER inside).
const SETTING_RS256: &str = "signing_key_rs256";
const AAD_RS256: &[u8] = b"latchkey/v1/signing-key-rs256";

/// A decoded signing key.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public half as a JWK.
    pub jwk: Value,
}

#[derive(Clone)]
pub struct Signing {
    store: Arc<dyn Store>,
    encryption: DerivedKey,
    key: Arc<OnceCell<Arc<SigningKey>>>,
    rsa: Arc<OnceCell<Arc<SigningKey>>>,
}

impl Signing {
    pub fn new(store: Arc<dyn Store>, encryption: DerivedKey) -> Self {
        Signing { store, encryption, key: Arc::new(OnceCell::new()), rsa: Arc::new(OnceCell::new()) }
    }

    /// The key, loading (or creating) it on first use.
    pub async fn key(&self) -> Result<Arc<SigningKey>> {
        self.key.get_or_try_init(|| self.load_or_create()).await.cloned()
    }

    /// The RS256 key, loading (or generating) it on first use.
    pub async fn rsa_key(&self) -> Result<Arc<SigningKey>> {
        self.rsa.get_or_try_init(|| self.load_or_create_rsa()).await.cloned()
    }

    /// The key for `alg` (`RS256` or `ES256`).
    pub async fn key_for(&self, alg: Algorithm) -> Result<Arc<SigningKey>> {
        match alg {
            Algorithm::ES256 => self.key().await,
            Algorithm::RS256 => self.rsa_key().await,
            other => Err(CoreError::Internal(format!("no signing key for {other:?}"))),
        }
    }

    /// A compact JWS over `claims` with the key for `alg`.
    pub async fn sign_with<T: Serialize>(&self, alg: Algorithm, claims: &T) -> Result<String> {
        let key = self.key_for(alg).await?;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| CoreError::Internal(format!("could not sign a token: {e}")))
    }

    /// The claims of a token signed by one of our keys (`RS256` or `ES256`), if the signature
    /// holds and it has not expired. The audience is the caller's to check.
    pub async fn verify(&self, token: &str) -> Option<Value> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let key = match header.alg {
            Algorithm::ES256 | Algorithm::RS256 => self.key_for(header.alg).await.ok()?,
            _ => return None,
        };
        if header.kid.as_deref() != Some(key.kid.as_str()) {
            return None;
        }
        let mut validation = Validation::new(key.alg);
        validation.validate_aud = false;
        validation.leeway = 0;
        jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).ok().map(|d| d.claims)
    }

    async fn load_or_create_rsa(&self) -> Result<Arc<SigningKey>> {
        if let Some(stored) = self.store.get_setting(SETTING_RS256).await.map_err(CoreError::from_store)? {
            return self.decode_rsa(&stored).map(Arc::new);
        }
        let der = tokio::task::spawn_blocking(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                .map_err(|e| CoreError::Internal(format!("could not generate an RSA key: {e}")))?;
            key.to_pkcs1_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| CoreError::Internal(format!("could not encode the RSA key: {e}")))
        })
        .await
        .map_err(|e| CoreError::Internal(format!("key generation failed: {e}")))??;
        let stored = self.encrypt_with(&der, &SystemRandom::new(), "RS256", AAD_RS256)?;
        self.store.set_setting(SETTING_RS256, &stored).await.map_err(CoreError::from_store)?;
        let kept = self.store.get_setting(SETTING_RS256).await.map_err(CoreError::from_store)?.unwrap_or(stored);
        tracing::info!("generated the token signing key (RS256)");
        self.decode_rsa(&kept).map(Arc::new)
    }

    fn decode_rsa(&self, stored: &Value) -> Result<SigningKey> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let der = self.open(stored, AAD_RS256)?;
        let corrupt = |what: &str| CoreError::Internal(format!("stored RSA signing key: {what}"));
        let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|_| corrupt("not an RSA key"))?;
        let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
        let kid = hex::encode(&Sha256::digest(format!("{n}.{e}").as_bytes())[..8]);
        let decoding = DecodingKey::from_rsa_components(&n, &e).map_err(|_| corrupt("bad public key"))?;
        let jwk = json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e });
        Ok(SigningKey { kid, alg: Algorithm::RS256, encoding: EncodingKey::from_rsa_der(&der), decoding, jwk })
    }

    /// Decrypts a stored key blob.
    fn open(&self, stored: &Value, aad: &[u8]) -> Result<Vec<u8>> {
        let corrupt = |what: &str| CoreError::Internal(format!("stored signing key: {what}"));
        let field = |name: &str| {
            stored.get(name).and_then(Value::as_str).and_then(|s| STANDARD.decode(s).ok()).ok_or_else(|| corrupt(name))
        };
        let nonce: [u8; NONCE_LEN] = field("nonce")?.try_into().map_err(|_| corrupt("nonce length"))?;
        let mut buf = field("ciphertext")?;
        let plain = self
            .cipher()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| corrupt("cannot be decrypted with this secret_key"))?;
        Ok(plain.to_vec())
    }

    /// `{"keys": [jwk]}` as published at a JWKS endpoint.
    pub async fn jwks(&self) -> Result<Value> {
        Ok(json!({ "keys": [self.key().await?.jwk.clone()] }))
    }

    /// A compact JWS (ES256) over `claims`, with the key's `kid`.
    pub async fn sign<T: Serialize>(&self, claims: &T) -> Result<String> {
        let key = self.key().await?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| CoreError::Internal(format!("could not sign a token: {e}")))
    }

    async fn load_or_create(&self) -> Result<Arc<SigningKey>> {
        if let Some(stored) = self.store.get_setting(SETTING).await.map_err(CoreError::from_store)? {
            return self.decode(&stored).map(Arc::new);
        }
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| CoreError::Internal("could not generate a signing key".into()))?;
        let stored = self.encrypt(pkcs8.as_ref(), &rng)?;
        self.store.set_setting(SETTING, &stored).await.map_err(CoreError::from_store)?;
        // Another instance may have stored its key at the same moment; whichever the store
        // kept is the one every instance uses.
        let kept = self.store.get_setting(SETTING).await.map_err(CoreError::from_store)?.unwrap_or(stored);
        tracing::info!("generated the token signing key (ES256)");
        self.decode(&kept).map(Arc::new)
    }

    fn cipher(&self) -> Result<LessSafeKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, self.encryption.bytes())
            .map_err(|_| CoreError::Internal("bad encryption key".into()))?;
        Ok(LessSafeKey::new(unbound))
    }

    fn encrypt(&self, plain: &[u8], rng: &SystemRandom) -> Result<Value> {
        self.encrypt_with(plain, rng, "ES256", AAD)
    }

    fn encrypt_with(&self, plain: &[u8], rng: &SystemRandom, alg: &str, aad: &[u8]) -> Result<Value> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| CoreError::Internal("no randomness".into()))?;
        let mut buf = plain.to_vec();
        self.cipher()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| CoreError::Internal("could not encrypt the signing key".into()))?;
        Ok(json!({ "alg": alg, "enc": "A256GCM", "nonce": STANDARD.encode(nonce), "ciphertext": STANDARD.encode(buf) }))
    }

    fn decode(&self, stored: &Value) -> Result<SigningKey> {
        let corrupt = |what: &str| CoreError::Internal(format!("stored signing key: {what}"));
        let field = |name: &str| {
            stored.get(name).and_then(Value::as_str).and_then(|s| STANDARD.decode(s).ok()).ok_or_else(|| corrupt(name))
        };
        let nonce: [u8; NONCE_LEN] = field("nonce")?.try_into().map_err(|_| corrupt("nonce length"))?;
        let mut buf = field("ciphertext")?;
        // A different secret key cannot open it: instances sharing a store need the same secret_key.
        let pkcs8 = self
            .cipher()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut buf)
            .map_err(|_| corrupt("cannot be decrypted with this secret_key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &SystemRandom::new())
            .map_err(|_| corrupt("not a P-256 key"))?;
        // Uncompressed point: 0x04 || x (32) || y (32).
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(corrupt("unexpected public key length"));
        }
        let (x, y) = (&point[1..33], &point[33..65]);
        let kid = hex::encode(&Sha256::digest(point)[..8]);
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|_| corrupt("bad public key"))?;
        let jwk = json!({ "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid, "x": x, "y": y });
        Ok(SigningKey { kid, alg: Algorithm::ES256, encoding: EncodingKey::from_ec_der(pkcs8), decoding, jwk })
    }
}
