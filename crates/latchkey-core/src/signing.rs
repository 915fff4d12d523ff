//! The instance's token signing key (ES256, P-256): signs forward-auth JWTs now and OIDC
//! tokens later. Generated on first use, kept encrypted at rest in the settings store
//! (AES-256-GCM under the key derived for secret encryption), decoded once per process.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
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

/// A decoded signing key.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    /// The public half as a JWK.
    pub jwk: Value,
}

#[derive(Clone)]
pub struct Signing {
    store: Arc<dyn Store>,
    encryption: DerivedKey,
    key: Arc<OnceCell<Arc<SigningKey>>>,
}

impl Signing {
    pub fn new(store: Arc<dyn Store>, encryption: DerivedKey) -> Self {
        Signing { store, encryption, key: Arc::new(OnceCell::new()) }
    }

    /// The key, loading (or creating) it on first use.
    pub async fn key(&self) -> Result<Arc<SigningKey>> {
        self.key.get_or_try_init(|| self.load_or_create()).await.cloned()
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
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| CoreError::Internal("no randomness".into()))?;
        let mut buf = plain.to_vec();
        self.cipher()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut buf)
            .map_err(|_| CoreError::Internal("could not encrypt the signing key".into()))?;
        Ok(
            json!({ "alg": "ES256", "enc": "A256GCM", "nonce": STANDARD.encode(nonce), "ciphertext": STANDARD.encode(buf) }),
        )
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
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        Ok(SigningKey { kid, encoding: EncodingKey::from_ec_der(pkcs8), jwk })
    }
}
