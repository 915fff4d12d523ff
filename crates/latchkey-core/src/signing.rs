//! The instance's token signing keys, one current key per algorithm: RS256 (RSA 2048) is the
//! OIDC default, ES256 (P-256) signs forward-auth JWTs and OIDC tokens of providers that choose
//! it, EdDSA (Ed25519) is selectable per provider. Each is generated on first use and kept
//! encrypted at rest in the settings store (AES-256-GCM under the key derived for secret
//! encryption, bound to its algorithm).
//!
//! Rotation makes a new key current; the old key's public half is kept (public keys need no
//! sealing) and stays in JWKS and accepted by `verify` until every token it signed has
//! expired, then it is dropped. Keys are cached in memory and reloaded when the change feed
//! reports a settings change, so a rotation by the CLI reaches running servers.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::keys::DerivedKey;
use crate::model::Change;
use crate::store::Store;

/// The algorithms keys exist for, in the order `keys list` shows them.
pub const ALGORITHMS: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Settings key of the retired public keys.
const RETIRED_SETTING: &str = "signing_keys_retired";

/// Where a current key of `alg` is stored and the AAD binding its ciphertext to that purpose:
/// a blob encrypted for something else does not open here.
fn storage(alg: Algorithm) -> Option<(&'static str, &'static [u8])> {
    match alg {
        Algorithm::ES256 => Some(("signing_key_es256", b"latchkey/v1/signing-key-es256")),
        Algorithm::RS256 => Some(("signing_key_rs256", b"latchkey/v1/signing-key-rs256")),
        Algorithm::EdDSA => Some(("signing_key_eddsa", b"latchkey/v1/signing-key-eddsa")),
        _ => None,
    }
}

/// The JOSE name of a supported algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "RS256",
    }
}

/// A supported algorithm by its JOSE name (`RS256`, `ES256`, `EdDSA`).
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// The private half of a current key, parsed once (checking a key costs a good part of a
/// signature). RSA signs with OpenSSL, which the binary links for WebAuthn attestation anyway:
/// it uses the CPU's wide-multiply instructions and signs about twice as fast as ring, and two
/// RS256 signatures (ID and access token) are most of a token request's cost.
enum PrivateKey {
    Rsa(openssl::pkey::PKey<openssl::pkey::Private>),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl PrivateKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let failed = || CoreError::Internal("could not sign a token".into());
        let rng = SystemRandom::new();
        match self {
            PrivateKey::Rsa(key) => openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key)
                .and_then(|mut signer| signer.sign_oneshot_to_vec(message))
                .map_err(|_| failed()),
            // The FIXED encoding (r || s) is what JWS wants for ES256.
            PrivateKey::Ecdsa(pair) => Ok(pair.sign(&rng, message).map_err(|_| failed())?.as_ref().to_vec()),
            PrivateKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

/// A decoded current signing key.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    private: PrivateKey,
    decoding: DecodingKey,
    /// The public half as a JWK.
    pub jwk: Value,
}

impl SigningKey {
    /// The key from its private half (PKCS#1 DER for RSA, PKCS#8 for the others).
    pub fn from_private(alg: Algorithm, private: &[u8]) -> Result<SigningKey> {
        let corrupt = |what: &str| CoreError::Internal(format!("stored {} signing key: {what}", alg_name(alg)));
        match alg {
            Algorithm::RS256 => {
                let key = openssl::rsa::Rsa::private_key_from_der(private).map_err(|_| corrupt("not an RSA key"))?;
                if !key.check_key().unwrap_or(false) {
                    return Err(corrupt("inconsistent RSA key"));
                }
                let n = URL_SAFE_NO_PAD.encode(key.n().to_vec());
                let e = URL_SAFE_NO_PAD.encode(key.e().to_vec());
                let kid = hex::encode(&Sha256::digest(format!("{n}.{e}").as_bytes())[..8]);
                let decoding = DecodingKey::from_rsa_components(&n, &e).map_err(|_| corrupt("bad public key"))?;
                let jwk = json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e });
                let key = openssl::pkey::PKey::from_rsa(key).map_err(|_| corrupt("not a usable RSA key"))?;
                Ok(SigningKey { kid, alg, private: PrivateKey::Rsa(key), decoding, jwk })
            }
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, private, &SystemRandom::new())
                    .map_err(|_| corrupt("not a P-256 key"))?;
                // Uncompressed point: 0x04 || x (32) || y (32).
                let point = pair.public_key().as_ref();
                if point.len() != 65 {
                    return Err(corrupt("unexpected public key length"));
                }
                let kid = hex::encode(&Sha256::digest(point)[..8]);
                let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
                let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|_| corrupt("bad public key"))?;
                let jwk =
                    json!({ "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid, "x": x, "y": y });
                Ok(SigningKey { kid, alg, private: PrivateKey::Ecdsa(pair), decoding, jwk })
            }
            _ => {
                let pair =
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(private).map_err(|_| corrupt("not an Ed25519 key"))?;
                let public = pair.public_key().as_ref();
                let kid = hex::encode(&Sha256::digest(public)[..8]);
                let x = URL_SAFE_NO_PAD.encode(public);
                let decoding = DecodingKey::from_ed_components(&x).map_err(|_| corrupt("bad public key"))?;
                let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid, "x": x });
                Ok(SigningKey { kid, alg, private: PrivateKey::Ed25519(pair), decoding, jwk })
            }
        }
    }

    /// The compact JWS (`header.payload.signature`, each base64url without padding) that
    /// `jsonwebtoken::encode` would produce, signed with the key parsed once at load.
    pub fn sign<T: Serialize>(&self, header: &Header, claims: &T) -> Result<String> {
        let part = |v: Vec<u8>| URL_SAFE_NO_PAD.encode(v);
        let json = |e: serde_json::Error| CoreError::Internal(format!("could not encode a token: {e}"));
        let mut message = part(serde_json::to_vec(header).map_err(json)?);
        message.push('.');
        message.push_str(&part(serde_json::to_vec(claims).map_err(json)?));
        let signature = self.private.sign(message.as_bytes())?;
        message.push('.');
        message.push_str(&part(signature));
        Ok(message)
    }
}

/// A retired key as stored: its public half and until when tokens it signed may be alive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetiredRecord {
    pub alg: String,
    pub kid: String,
    pub jwk: Value,
    pub retired_at: i64,
    /// Unix time after which no token it signed is valid; the key is dropped then.
    pub expires_at: i64,
}

/// A retired key, decoded for verification.
struct RetiredKey {
    record: RetiredRecord,
    alg: Algorithm,
    decoding: DecodingKey,
}

/// What a rotation did, for the CLI and the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    pub alg: &'static str,
    pub old_kid: Option<String>,
    pub new_kid: String,
    /// Until when the old public key stays published (unix time).
    pub old_kept_until: Option<i64>,
}

/// One row of `keys list`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub alg: &'static str,
    pub kid: String,
    /// `current` or `retired`.
    pub status: &'static str,
    pub expires_at: Option<i64>,
}

/// The retired list with `old` added: keys whose tokens have all expired by `now` are dropped.
pub fn retire(list: Vec<RetiredRecord>, old: Option<RetiredRecord>, now: i64) -> Vec<RetiredRecord> {
    list.into_iter().chain(old).filter(|r| r.expires_at > now).collect()
}

#[derive(Default)]
struct Cache {
    /// `None`: the store has no key for the algorithm (yet), so a token claiming it is
    /// refused without asking the store again.
    current: HashMap<Algorithm, Option<Arc<SigningKey>>>,
    retired: Option<Arc<Vec<RetiredKey>>>,
}

/// How many verified tokens are remembered (each a few hundred bytes of claims).
const VERIFIED_CAPACITY: u64 = 4096;

/// A token whose signature held, remembered until it expires so that a client calling
/// userinfo or an API with the same access token pays for the RSA check once.
struct Verified {
    token: Box<str>,
    claims: Value,
    exp: i64,
    /// The key generation it was checked under: a key change forgets it.
    generation: u64,
}

#[derive(Clone)]
pub struct Signing {
    store: Arc<dyn Store>,
    encryption: DerivedKey,
    clock: Arc<dyn Clock>,
    cache: Arc<RwLock<Cache>>,
    /// Verified tokens by a keyed hash of their text (the text itself is compared on a hit).
    verified: moka::sync::Cache<u64, Arc<Verified>>,
    verified_hasher: std::hash::RandomState,
    /// Bumped on every invalidation; a load that raced with one is not cached.
    generation: Arc<AtomicU64>,
    /// One process generates a missing key at a time.
    creating: Arc<tokio::sync::Mutex<()>>,
}

impl Signing {
    pub fn new(store: Arc<dyn Store>, encryption: DerivedKey, clock: Arc<dyn Clock>) -> Self {
        Signing {
            store,
            encryption,
            clock,
            cache: Arc::new(RwLock::new(Cache::default())),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(std::time::Duration::from_secs(600))
                .build(),
            verified_hasher: std::hash::RandomState::new(),
            generation: Arc::new(AtomicU64::new(0)),
            creating: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Settings changed somewhere (a rotation by another process among them): reload.
    pub fn apply_change(&self, change: &Change) {
        if *change == Change::Config {
            self.invalidate();
        }
    }

    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.verified.invalidate_all();
        if let Ok(mut c) = self.cache.write() {
            *c = Cache::default();
        }
    }

    /// The ES256 key (forward-auth JWTs), loading (or creating) it on first use.
    pub async fn key(&self) -> Result<Arc<SigningKey>> {
        self.key_for(Algorithm::ES256).await
    }

    /// The RS256 key, loading (or generating) it on first use.
    pub async fn rsa_key(&self) -> Result<Arc<SigningKey>> {
        self.key_for(Algorithm::RS256).await
    }

    /// The current key for `alg`, loading (or generating) it on first use.
    pub async fn key_for(&self, alg: Algorithm) -> Result<Arc<SigningKey>> {
        match self.current(alg, true).await? {
            Some(k) => Ok(k),
            None => Err(CoreError::Internal(format!("no signing key for {alg:?}"))),
        }
    }

    /// The current key for `alg` from memory or the store; generated only when `create`
    /// (verifying a token never creates a key).
    async fn current(&self, alg: Algorithm, create: bool) -> Result<Option<Arc<SigningKey>>> {
        match self.cache.read().ok().and_then(|c| c.current.get(&alg).cloned()) {
            Some(Some(k)) => return Ok(Some(k)),
            Some(None) if !create => return Ok(None),
            _ => {}
        }
        let generation = self.generation.load(Ordering::Acquire);
        let key = match self.load_current(alg).await? {
            Some(k) => k,
            None if !create => {
                if self.generation.load(Ordering::Acquire) == generation {
                    if let Ok(mut c) = self.cache.write() {
                        c.current.insert(alg, None);
                    }
                }
                return Ok(None);
            }
            None => {
                let _guard = self.creating.lock().await;
                match self.load_current(alg).await? {
                    Some(k) => k,
                    None => self.create(alg).await?,
                }
            }
        };
        let key = Arc::new(key);
        if self.generation.load(Ordering::Acquire) == generation {
            if let Ok(mut c) = self.cache.write() {
                c.current.insert(alg, Some(Arc::clone(&key)));
            }
        }
        Ok(Some(key))
    }

    async fn load_current(&self, alg: Algorithm) -> Result<Option<SigningKey>> {
        let (setting, _) = storage(alg).ok_or_else(|| CoreError::Internal(format!("no signing key for {alg:?}")))?;
        match self.store.get_setting(setting).await.map_err(CoreError::from_store)? {
            Some(stored) => self.decode(alg, &stored).map(Some),
            None => Ok(None),
        }
    }

    /// Generates a key for `alg` and stores it sealed, as the current one.
    async fn create(&self, alg: Algorithm) -> Result<SigningKey> {
        let (setting, aad) = storage(alg).ok_or_else(|| CoreError::Internal(format!("no signing key for {alg:?}")))?;
        let rng = SystemRandom::new();
        let private = match alg {
            // Stored as PKCS#1 DER, as keys made before OpenSSL signed them were.
            Algorithm::RS256 => tokio::task::spawn_blocking(|| {
                openssl::rsa::Rsa::generate(2048)
                    .and_then(|key| key.private_key_to_der())
                    .map_err(|e| CoreError::Internal(format!("could not generate an RSA key: {e}")))
            })
            .await
            .map_err(|e| CoreError::Internal(format!("key generation failed: {e}")))??,
            Algorithm::ES256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| CoreError::Internal("could not generate a signing key".into()))?
                .as_ref()
                .to_vec(),
            _ => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| CoreError::Internal("could not generate a signing key".into()))?
                .as_ref()
                .to_vec(),
        };
        let stored = self.seal(&private, &rng, alg_name(alg), aad)?;
        self.store.set_setting(setting, &stored).await.map_err(CoreError::from_store)?;
        // Another instance may have stored its key at the same moment; whichever the store
        // kept is the one every instance uses.
        let kept = self.store.get_setting(setting).await.map_err(CoreError::from_store)?.unwrap_or(stored);
        tracing::info!(alg = alg_name(alg), "generated a token signing key");
        self.decode(alg, &kept)
    }

    /// A compact JWS over `claims` with the current key for `alg`.
    pub async fn sign_with<T: Serialize>(&self, alg: Algorithm, claims: &T) -> Result<String> {
        self.sign_typed(alg, "JWT", claims).await
    }

    /// Like [`Self::sign_with`], with a `typ` header (`logout+jwt`…).
    pub async fn sign_typed<T: Serialize>(&self, alg: Algorithm, typ: &str, claims: &T) -> Result<String> {
        let key = self.key_for(alg).await?;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some(typ.to_string());
        key.sign(&header, claims)
    }

    /// A compact JWS (ES256) over `claims`, with the key's `kid`.
    pub async fn sign<T: Serialize>(&self, claims: &T) -> Result<String> {
        self.sign_with(Algorithm::ES256, claims).await
    }

    /// The retired keys still within their tokens' lifetime.
    async fn retired(&self) -> Result<Arc<Vec<RetiredKey>>> {
        if let Some(r) = self.cache.read().ok().and_then(|c| c.retired.clone()) {
            return Ok(r);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let records = self.retired_records().await?;
        let keys: Vec<RetiredKey> = records
            .into_iter()
            .filter_map(|record| {
                let alg = parse_alg(&record.alg)?;
                let decoding = decoding_from_jwk(&record.jwk)?;
                Some(RetiredKey { record, alg, decoding })
            })
            .collect();
        let keys = Arc::new(keys);
        if self.generation.load(Ordering::Acquire) == generation {
            if let Ok(mut c) = self.cache.write() {
                c.retired = Some(Arc::clone(&keys));
            }
        }
        Ok(keys)
    }

    async fn retired_records(&self) -> Result<Vec<RetiredRecord>> {
        let stored = self.store.get_setting(RETIRED_SETTING).await.map_err(CoreError::from_store)?;
        Ok(stored.and_then(|v| serde_json::from_value(v.get("keys")?.clone()).ok()).unwrap_or_default())
    }

    /// The claims of a token signed by one of our keys, current or retired but not yet
    /// dropped, if the signature holds and it has not expired. The audience is the caller's
    /// to check.
    pub async fn verify(&self, token: &str) -> Option<Value> {
        let key = std::hash::BuildHasher::hash_one(&self.verified_hasher, token);
        let now = self.clock.now().timestamp();
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(v) = self.verified.get(&key) {
            if &*v.token == token && v.exp > now && v.generation == generation {
                return Some(v.claims.clone());
            }
        }
        let (claims, key_until) = self.verify_signature(token).await?;
        // Only tokens that expire are remembered, and never past their expiry or past the
        // moment a retired key that signed them is dropped.
        let exp = claims.get("exp").and_then(Value::as_i64).map(|exp| key_until.map_or(exp, |k| exp.min(k)));
        if let Some(exp) = exp.filter(|exp| *exp > now) {
            let verified = Verified { token: token.into(), claims: claims.clone(), exp, generation };
            self.verified.insert(key, Arc::new(verified));
        }
        Some(claims)
    }

    /// The claims, and when the key that signed them is dropped (`None`: the current key).
    async fn verify_signature(&self, token: &str) -> Option<(Value, Option<i64>)> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid.as_deref()?;
        storage(header.alg)?;
        let mut validation = Validation::new(header.alg);
        validation.validate_aud = false;
        validation.leeway = 0;
        if let Some(current) = self.current(header.alg, false).await.ok()? {
            if current.kid == kid {
                let claims = jsonwebtoken::decode::<Value>(token, &current.decoding, &validation).ok()?.claims;
                return Some((claims, None));
            }
        }
        let now = self.clock.now().timestamp();
        let retired = self.retired().await.ok()?;
        let old = retired.iter().find(|r| r.alg == header.alg && r.record.kid == kid && r.record.expires_at > now)?;
        let claims = jsonwebtoken::decode::<Value>(token, &old.decoding, &validation).ok()?.claims;
        Some((claims, Some(old.record.expires_at)))
    }

    /// The JWKS for tokens signed with `alg`: the current key and the retired ones whose
    /// tokens may still be alive.
    pub async fn jwks_for(&self, alg: Algorithm) -> Result<Value> {
        let current = self.key_for(alg).await?;
        let now = self.clock.now().timestamp();
        let mut keys = vec![current.jwk.clone()];
        for r in self.retired().await?.iter().filter(|r| r.alg == alg && r.record.expires_at > now) {
            keys.push(r.record.jwk.clone());
        }
        Ok(json!({ "keys": keys }))
    }

    /// The JWKS of the forward-auth (ES256) key.
    pub async fn jwks(&self) -> Result<Value> {
        self.jwks_for(Algorithm::ES256).await
    }

    /// The longest lifetime of a token any provider signs (access and ID tokens, forward-auth
    /// JWTs), in seconds: how long a retired key must stay published.
    pub async fn longest_token_lifetime(&self) -> Result<i64> {
        let providers = self.store.list_providers().await.map_err(CoreError::from_store)?;
        Ok(providers
            .iter()
            .map(|p| p.config.get("access_token_validity").and_then(Value::as_i64).filter(|v| *v > 0).unwrap_or(300))
            .fold(300, i64::max))
    }

    /// Makes a new key current for `alg`. The old public key stays published for
    /// `keep_for_secs` (the longest lifetime of a token it may have signed).
    pub async fn rotate(&self, alg: Algorithm, keep_for_secs: i64) -> Result<Rotation> {
        let _guard = self.creating.lock().await;
        let now = self.clock.now().timestamp();
        let old = self.load_current(alg).await?;
        let old_record = old.as_ref().map(|k| RetiredRecord {
            alg: alg_name(alg).to_string(),
            kid: k.kid.clone(),
            jwk: k.jwk.clone(),
            retired_at: now,
            expires_at: now + keep_for_secs.max(0),
        });
        // The old public key is recorded before the new key replaces it: a crash in between
        // leaves it both current and retired, which is harmless.
        let list = retire(self.retired_records().await?, old_record.clone(), now);
        self.store.set_setting(RETIRED_SETTING, &json!({ "keys": list })).await.map_err(CoreError::from_store)?;
        let new = self.create(alg).await?;
        self.invalidate();
        Ok(Rotation {
            alg: alg_name(alg),
            old_kid: old.map(|k| k.kid.clone()),
            new_kid: new.kid.clone(),
            old_kept_until: old_record.map(|r| r.expires_at),
        })
    }

    /// Every key that exists: current ones (without generating missing ones) and retired
    /// ones not yet dropped.
    pub async fn list(&self) -> Result<Vec<KeyInfo>> {
        let now = self.clock.now().timestamp();
        let mut out = Vec::new();
        for &alg in ALGORITHMS {
            if let Some(k) = self.load_current(alg).await? {
                out.push(KeyInfo { alg: alg_name(alg), kid: k.kid, status: "current", expires_at: None });
            }
            for r in self.retired_records().await?.into_iter().filter(|r| r.alg == alg_name(alg) && r.expires_at > now)
            {
                out.push(KeyInfo { alg: alg_name(alg), kid: r.kid, status: "retired", expires_at: Some(r.expires_at) });
            }
        }
        Ok(out)
    }

    fn decode(&self, alg: Algorithm, stored: &Value) -> Result<SigningKey> {
        let (_, aad) = storage(alg).ok_or_else(|| CoreError::Internal(format!("no signing key for {alg:?}")))?;
        SigningKey::from_private(alg, &self.open(stored, aad)?)
    }

    fn cipher(&self) -> Result<LessSafeKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, self.encryption.bytes())
            .map_err(|_| CoreError::Internal("bad encryption key".into()))?;
        Ok(LessSafeKey::new(unbound))
    }

    fn seal(&self, plain: &[u8], rng: &SystemRandom, alg: &str, aad: &[u8]) -> Result<Value> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| CoreError::Internal("no randomness".into()))?;
        let mut buf = plain.to_vec();
        self.cipher()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| CoreError::Internal("could not encrypt the signing key".into()))?;
        Ok(json!({ "alg": alg, "enc": "A256GCM", "nonce": STANDARD.encode(nonce), "ciphertext": STANDARD.encode(buf) }))
    }

    /// Decrypts a stored key blob. A different secret key cannot open it: instances sharing a
    /// store need the same secret_key.
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
}

/// The verification key of a published JWK (ours: RSA, P-256 or Ed25519).
fn decoding_from_jwk(jwk: &Value) -> Option<DecodingKey> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    match s("kty")? {
        "RSA" => DecodingKey::from_rsa_components(s("n")?, s("e")?).ok(),
        "EC" => DecodingKey::from_ec_components(s("x")?, s("y")?).ok(),
        "OKP" => DecodingKey::from_ed_components(s("x")?).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kid: &str, expires_at: i64) -> RetiredRecord {
        RetiredRecord { alg: "RS256".into(), kid: kid.into(), jwk: json!({}), retired_at: 0, expires_at }
    }

    #[test]
    fn retiring_drops_keys_whose_tokens_have_all_expired() {
        let list = vec![record("a", 100), record("b", 200)];
        let out = retire(list, Some(record("c", 400)), 150);
        assert_eq!(out.iter().map(|r| r.kid.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        // A key whose tokens expire exactly now is gone: nothing it signed is still valid.
        assert!(retire(out, None, 400).is_empty());
    }

    /// Our signer produces exactly what `jsonwebtoken::encode` does (RS256 and EdDSA are
    /// deterministic), and ES256 tokens verify with the published key.
    #[test]
    fn signs_like_jsonwebtoken_encode() {
        use jsonwebtoken::EncodingKey;
        let claims = json!({ "sub": "alice", "exp": 4_000_000_000i64, "groups": ["a", "b"] });
        let rng = SystemRandom::new();
        let rsa_der = openssl::rsa::Rsa::generate(2048).unwrap().private_key_to_der().unwrap();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let cases = [
            (Algorithm::RS256, rsa_der.clone(), Some(EncodingKey::from_rsa_der(&rsa_der))),
            (Algorithm::EdDSA, ed.as_ref().to_vec(), Some(EncodingKey::from_ed_der(ed.as_ref()))),
            (Algorithm::ES256, ec.as_ref().to_vec(), None),
        ];
        for (alg, private, reference) in cases {
            let key = SigningKey::from_private(alg, &private).unwrap();
            let mut header = Header::new(alg);
            header.kid = Some(key.kid.clone());
            let token = key.sign(&header, &claims).unwrap();
            if let Some(reference) = reference {
                assert_eq!(token, jsonwebtoken::encode(&header, &claims, &reference).unwrap(), "{alg:?}");
            }
            let decoded = jsonwebtoken::decode::<Value>(&token, &key.decoding, &Validation::new(alg)).unwrap();
            assert_eq!(decoded.claims, claims, "{alg:?}");
            assert_eq!(decoded.header.kid.as_deref(), Some(key.kid.as_str()));
            let from_jwk = decoding_from_jwk(&key.jwk).unwrap();
            jsonwebtoken::decode::<Value>(&token, &from_jwk, &Validation::new(alg)).unwrap();
        }
    }

    #[test]
    fn algorithms_by_name() {
        for &alg in ALGORITHMS {
            assert_eq!(parse_alg(alg_name(alg)), Some(alg));
        }
        assert_eq!(parse_alg("HS256"), None);
        assert_eq!(parse_alg("none"), None);
    }
}
