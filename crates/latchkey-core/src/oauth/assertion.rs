//! `private_key_jwt` client authentication (RFC 7523 §2.2, OpenID Connect Core §9): the client
//! proves who it is with a short-lived JWT signed by a key whose public half is registered in
//! its provider's `jwks`. jsonwebtoken checks the signature; this module reads the client's
//! JWKS, picks the key, checks the claims, and says why an assertion was refused (for the log,
//! never for the client, which only learns `invalid_client`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;

/// The only `client_assertion_type` there is for JWT client authentication.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longest accepted lifetime of an assertion (`exp` − now). authlib signs assertions valid
/// for an hour by default, openid-client for a minute; a used `jti` is remembered until its
/// `exp`, so this also bounds how long the replay memory holds one.
pub const MAX_LIFETIME_SECS: i64 = 3600;

/// Clock difference tolerated between the client and us, on `iat`, `nbf` and the lifetime bound
/// (never on `exp` itself: an expired assertion is refused).
pub const CLOCK_SKEW_SECS: i64 = 60;

/// The algorithms an assertion may be signed with, as discovery lists them. Asymmetric only:
/// never `none`, never HS* (which would make the public key a shared secret).
pub const SIGNING_ALGS: &[&str] =
    &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", ED25519];

/// RFC 9864's fully-specified name for EdDSA over Ed25519. jsonwebtoken knows the signature
/// only as `EdDSA`, so assertions and keys that use this name are translated here.
const ED25519: &str = "Ed25519";

/// A JWKS bigger than this is a mistake (or an attack on the verifier's time).
const MAX_KEYS: usize = 16;
const MAX_JTI_LEN: usize = 256;
/// RSA keys below this size are refused.
const MIN_RSA_BITS: usize = 2048;

/// How a client authenticates at the token, introspection and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    None,
}

impl AuthMethod {
    pub const NAMES: &'static [&'static str] =
        &["client_secret_basic", "client_secret_post", "private_key_jwt", "none"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_secret_basic" => Some(AuthMethod::ClientSecretBasic),
            "client_secret_post" => Some(AuthMethod::ClientSecretPost),
            "private_key_jwt" => Some(AuthMethod::PrivateKeyJwt),
            "none" => Some(AuthMethod::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::None => "none",
        }
    }
}

/// Why a provider's `jwks` setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("is not valid JSON: {0}")]
    NotJson(String),
    #[error("must be a JWKS: an object with a \"keys\" list")]
    NotASet,
    #[error("has no keys")]
    Empty,
    #[error("has more than {MAX_KEYS} keys")]
    TooMany,
    #[error("key {index}: {reason}")]
    Key { index: usize, reason: String },
}

/// Why an assertion was refused. Logged; the client is only told `invalid_client`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("the client has no jwks")]
    NoJwks,
    #[error("the assertion is not a JWT: {0}")]
    Malformed(String),
    #[error("alg {0} is not accepted (only RS*, PS*, ES256, ES384, EdDSA and Ed25519)")]
    Alg(String),
    #[error("no registered key matches (kid {kid:?}, alg {alg})")]
    NoKey { kid: Option<String>, alg: String },
    #[error("the signature does not verify: {0}")]
    Signature(String),
    #[error("claim {0} is missing or malformed")]
    Missing(&'static str),
    #[error("iss is not the client_id")]
    Issuer,
    #[error("sub is not the client_id")]
    Subject,
    #[error("aud names neither the token endpoint nor the issuer")]
    Audience,
    #[error("the assertion has expired")]
    Expired,
    #[error("exp is more than {MAX_LIFETIME_SECS} s ahead")]
    TooLong,
    #[error("the assertion is not valid yet (iat or nbf in the future)")]
    NotYetValid,
    #[error("its jti was used already (replay)")]
    Replayed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn algs(self) -> &'static [Algorithm] {
        match self {
            Family::Rsa => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            Family::P256 => &[Algorithm::ES256],
            Family::P384 => &[Algorithm::ES384],
            Family::Ed25519 => &[Algorithm::EdDSA],
        }
    }
}

#[derive(Clone)]
struct ClientKey {
    kid: Option<String>,
    family: Family,
    /// The key's own `alg`, when it names one: then only that one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl ClientKey {
    fn allows(&self, alg: Algorithm) -> bool {
        self.family.algs().contains(&alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// A client's public keys, parsed once when the client is loaded.
#[derive(Clone)]
pub struct ClientJwks {
    keys: Arc<Vec<ClientKey>>,
}

impl std::fmt::Debug for ClientJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")).collect();
        f.debug_struct("ClientJwks").field("kids", &kids).finish()
    }
}

/// The JWKS a setting holds: an object, or its JSON text (as a form or a YAML string gives it).
pub fn jwks_value(v: &Value) -> Result<Value, JwksError> {
    match v {
        Value::String(s) => serde_json::from_str(s).map_err(|e| JwksError::NotJson(e.to_string())),
        other => Ok(other.clone()),
    }
}

fn key_alg(a: &KeyAlgorithm) -> Option<Algorithm> {
    match a {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::PS384 => Some(Algorithm::PS384),
        KeyAlgorithm::PS512 => Some(Algorithm::PS512),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// The JOSE name of an algorithm.
pub fn alg_str(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
    }
}

fn parse_key(v: &Value) -> Result<ClientKey, String> {
    let obj = v.as_object().ok_or("is not an object")?;
    let kty = obj.get("kty").and_then(Value::as_str).ok_or("has no kty")?;
    if !matches!(kty, "RSA" | "EC" | "OKP") {
        return Err(format!("kty {kty} is not RSA, EC or OKP (symmetric keys are not accepted)"));
    }
    // Private parameters (RSA d, p, q…, EC/OKP d) have no business in a setting that admins
    // and the API show in clear.
    if let Some(p) = ["d", "p", "q", "dp", "dq", "qi"].iter().find(|p| obj.contains_key(**p)) {
        return Err(format!("holds private key material (\"{p}\"); register only the public key"));
    }
    // A key registered with `alg: Ed25519` is an EdDSA key for jsonwebtoken.
    let mut parsed = v.clone();
    if obj.get("alg").and_then(Value::as_str) == Some(ED25519) {
        parsed["alg"] = Value::String("EdDSA".into());
    }
    let jwk: Jwk = serde_json::from_value(parsed).map_err(|e| format!("is not a valid JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("is an encryption key (use: enc), not a signing key".into());
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD.decode(p.n.trim_end_matches('=')).map_err(|_| "has an n that is not base64url")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("is an RSA key of {bits} bits; at least {MIN_RSA_BITS} are needed"));
            }
            Family::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            ref other => return Err(format!("curve {other:?} is not supported (P-256 or P-384)")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Family::Ed25519,
            ref other => return Err(format!("curve {other:?} is not supported (Ed25519)")),
        },
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are not accepted".into()),
    };
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(a) => match key_alg(a).filter(|a| family.algs().contains(a)) {
            Some(a) => Some(a),
            None => return Err(format!("alg {a:?} does not fit a {kty} signing key")),
        },
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("is not a usable key: {e}"))?;
    Ok(ClientKey { kid: jwk.common.key_id.clone(), family, alg, key })
}

/// Reads a client's JWKS setting (validation on write and loading use the same rules).
pub fn parse_jwks(v: &Value) -> Result<ClientJwks, JwksError> {
    let v = jwks_value(v)?;
    let list = v.get("keys").and_then(Value::as_array).ok_or(JwksError::NotASet)?;
    if list.is_empty() {
        return Err(JwksError::Empty);
    }
    if list.len() > MAX_KEYS {
        return Err(JwksError::TooMany);
    }
    let mut keys = Vec::with_capacity(list.len());
    let mut kids = HashSet::new();
    for (index, k) in list.iter().enumerate() {
        let key = parse_key(k).map_err(|reason| JwksError::Key { index, reason })?;
        if let Some(kid) = &key.kid {
            if !kids.insert(kid.clone()) {
                return Err(JwksError::Key { index, reason: format!("kid {kid} is used twice") });
            }
        }
        keys.push(key);
    }
    Ok(ClientJwks { keys: Arc::new(keys) })
}

impl ClientJwks {
    /// Checks the signature with the key the header names (by `kid`, or the only key that fits
    /// the algorithm when there is no `kid`) and returns the claims, unchecked.
    pub fn verify(&self, assertion: &str) -> Result<Value, AssertionError> {
        // jsonwebtoken refuses `alg` names it does not know, so the header is read as text first.
        let raw_header = assertion.split('.').next().and_then(decode_part);
        if let Some(header) = raw_header.filter(|h| h.get("alg").and_then(Value::as_str) == Some(ED25519)) {
            return self.verify_ed25519(assertion, &header);
        }
        let header = jsonwebtoken::decode_header(assertion).map_err(|e| AssertionError::Malformed(e.to_string()))?;
        let alg = header.alg;
        if !SIGNING_ALGS.contains(&alg_str(alg)) {
            return Err(AssertionError::Alg(alg_str(alg).into()));
        }
        let key = self.key_for(alg, alg_str(alg), header.kid.as_deref())?;
        let mut validation = Validation::new(alg);
        // The claims are checked by `check_claims`, against our clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        jsonwebtoken::decode::<Value>(assertion, &key.key, &validation)
            .map(|d| d.claims)
            .map_err(|e| AssertionError::Signature(e.to_string()))
    }

    /// The key the header names by `kid`, or the only key that fits `alg` when there is none.
    fn key_for(&self, alg: Algorithm, alg_name: &str, kid: Option<&str>) -> Result<&ClientKey, AssertionError> {
        let mut fitting = self.keys.iter().filter(|k| k.allows(alg));
        match kid {
            Some(kid) => fitting.find(|k| k.kid.as_deref() == Some(kid)),
            None => fitting.next().filter(|_| fitting.next().is_none()),
        }
        .ok_or_else(|| AssertionError::NoKey { kid: kid.map(String::from), alg: alg_name.into() })
    }

    /// An assertion whose header says `alg: Ed25519`: the same EdDSA signature under its
    /// RFC 9864 name, checked with jsonwebtoken's EdDSA verifier on the signing input.
    fn verify_ed25519(&self, assertion: &str, header: &Value) -> Result<Value, AssertionError> {
        let malformed = || AssertionError::Malformed("not three base64url parts".into());
        let (signing_input, signature) = assertion.rsplit_once('.').ok_or_else(malformed)?;
        let (_, payload) = signing_input.split_once('.').ok_or_else(malformed)?;
        let claims = decode_part(payload).filter(Value::is_object).ok_or_else(malformed)?;
        if header.get("crit").is_some() {
            return Err(AssertionError::Malformed("crit header parameters are not supported".into()));
        }
        let key = self.key_for(Algorithm::EdDSA, ED25519, header.get("kid").and_then(Value::as_str))?;
        match jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &key.key, Algorithm::EdDSA) {
            Ok(true) => Ok(claims),
            Ok(false) => Err(AssertionError::Signature("InvalidSignature".into())),
            Err(e) => Err(AssertionError::Signature(e.to_string())),
        }
    }
}

/// One base64url JSON part of a compact JWT.
fn decode_part(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The client an assertion claims to be (`sub`, else `iss`), read without verifying anything:
/// only to find whose keys to verify it with when the request names no `client_id`.
pub fn claimed_client(assertion: &str) -> Option<String> {
    let claims = decode_part(assertion.split('.').nth(1)?)?;
    claims.get("sub").or_else(|| claims.get("iss")).and_then(Value::as_str).map(String::from)
}

/// What a valid assertion leaves to remember: its `jti` is single-use until `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub jti: String,
    pub exp: i64,
}

fn time_claim(claims: &Value, name: &'static str) -> Result<Option<i64>, AssertionError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(AssertionError::Missing(name)),
    }
}

fn same_url(a: &str, b: &str) -> bool {
    // Our endpoints answer with and without the trailing slash; so may a client's `aud`.
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Checks an assertion's claims (RFC 7523 §3): `iss` and `sub` are the client, `aud` names one
/// of `audiences`, `exp` is in the future but not too far, `iat`/`nbf` are not in the future,
/// and there is a `jti`.
pub fn check_claims(
    claims: &Value,
    client_id: &str,
    audiences: &[String],
    now: i64,
) -> Result<Checked, AssertionError> {
    let text = |name: &'static str| claims.get(name).and_then(Value::as_str).ok_or(AssertionError::Missing(name));
    if text("iss")? != client_id {
        return Err(AssertionError::Issuer);
    }
    if text("sub")? != client_id {
        return Err(AssertionError::Subject);
    }
    let aud: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(AssertionError::Missing("aud")),
    };
    if !aud.iter().any(|a| audiences.iter().any(|ours| same_url(a, ours))) {
        return Err(AssertionError::Audience);
    }
    let exp = time_claim(claims, "exp")?.ok_or(AssertionError::Missing("exp"))?;
    if exp <= now {
        return Err(AssertionError::Expired);
    }
    if exp - now > MAX_LIFETIME_SECS + CLOCK_SKEW_SECS {
        return Err(AssertionError::TooLong);
    }
    for name in ["iat", "nbf"] {
        if time_claim(claims, name)?.is_some_and(|t| t > now + CLOCK_SKEW_SECS) {
            return Err(AssertionError::NotYetValid);
        }
    }
    let jti = text("jti").map_err(|_| AssertionError::Missing("jti"))?;
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(AssertionError::Missing("jti"));
    }
    Ok(Checked { jti: jti.to_string(), exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const TOKEN: &str = "https://id.test/application/o/token/";
    const ISSUER: &str = "https://id.test/application/o/app/";

    fn audiences() -> Vec<String> {
        vec![TOKEN.to_string(), ISSUER.to_string()]
    }

    fn claims() -> Value {
        json!({"iss": "c", "sub": "c", "aud": TOKEN, "exp": NOW + 60, "iat": NOW, "jti": "j1"})
    }

    fn check(c: &Value) -> Result<Checked, AssertionError> {
        check_claims(c, "c", &audiences(), NOW)
    }

    fn with(key: &str, v: Value) -> Value {
        let mut c = claims();
        c[key] = v;
        c
    }

    fn without(key: &str) -> Value {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(key);
        c
    }

    #[test]
    fn claims_accepted_with_either_audience() {
        assert_eq!(check(&claims()), Ok(Checked { jti: "j1".into(), exp: NOW + 60 }));
        assert!(check(&with("aud", json!(ISSUER))).is_ok(), "openid-client sends the issuer");
        assert!(check(&with("aud", json!(["https://other.test", ISSUER]))).is_ok());
        assert!(check(&with("aud", json!("https://id.test/application/o/token"))).is_ok(), "no trailing slash");
        assert!(check(&with("exp", json!(NOW + MAX_LIFETIME_SECS))).is_ok(), "authlib's hour");
    }

    #[test]
    fn claims_refused_with_the_reason() {
        assert_eq!(check(&with("iss", json!("other"))), Err(AssertionError::Issuer));
        assert_eq!(check(&with("sub", json!("other"))), Err(AssertionError::Subject));
        assert_eq!(check(&without("iss")), Err(AssertionError::Missing("iss")));
        assert_eq!(check(&with("aud", json!("https://id.test/application/o/other/"))), Err(AssertionError::Audience));
        assert_eq!(check(&with("aud", json!([]))), Err(AssertionError::Audience));
        assert_eq!(check(&with("aud", json!(5))), Err(AssertionError::Missing("aud")));
        assert_eq!(check(&without("exp")), Err(AssertionError::Missing("exp")));
        assert_eq!(check(&with("exp", json!(NOW))), Err(AssertionError::Expired), "exp is exclusive");
        assert_eq!(check(&with("exp", json!(NOW - 5))), Err(AssertionError::Expired));
        assert_eq!(check(&with("exp", json!("soon"))), Err(AssertionError::Missing("exp")));
        assert_eq!(check(&with("exp", json!(NOW + 2 * MAX_LIFETIME_SECS))), Err(AssertionError::TooLong));
        assert_eq!(check(&with("iat", json!(NOW + 600))), Err(AssertionError::NotYetValid));
        assert_eq!(check(&with("nbf", json!(NOW + 600))), Err(AssertionError::NotYetValid));
        assert!(check(&with("nbf", json!(NOW + 30))).is_ok(), "small clock skew is tolerated");
        assert_eq!(check(&without("jti")), Err(AssertionError::Missing("jti")));
        assert_eq!(check(&with("jti", json!(""))), Err(AssertionError::Missing("jti")));
        assert_eq!(check(&with("jti", json!("x".repeat(300)))), Err(AssertionError::Missing("jti")));
    }

    struct TestKey {
        encoding: EncodingKey,
        jwk: Value,
        alg: Algorithm,
    }

    fn ec_key(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        TestKey { encoding: EncodingKey::from_ec_der(pkcs8.as_ref()), jwk, alg: Algorithm::ES256 }
    }

    fn ed_key(kid: Option<&str>) -> TestKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        TestKey { encoding: EncodingKey::from_ed_der(pkcs8.as_ref()), jwk, alg: Algorithm::EdDSA }
    }

    fn sign(key: &TestKey, kid: Option<&str>) -> String {
        let mut header = Header::new(key.alg);
        header.kid = kid.map(String::from);
        encode(&header, &claims(), &key.encoding).unwrap()
    }

    #[test]
    fn signature_checked_with_the_key_kid_names() {
        let a = ec_key("a");
        let b = ec_key("b");
        let set = parse_jwks(&json!({"keys": [a.jwk, b.jwk]})).unwrap();
        assert_eq!(set.verify(&sign(&a, Some("a"))).unwrap()["jti"], "j1");
        assert_eq!(set.verify(&sign(&b, Some("b"))).unwrap()["jti"], "j1");
        assert!(matches!(set.verify(&sign(&a, Some("b"))), Err(AssertionError::Signature(_))), "wrong key");
        assert!(matches!(set.verify(&sign(&a, Some("zz"))), Err(AssertionError::NoKey { .. })));
        assert!(matches!(set.verify(&sign(&a, None)), Err(AssertionError::NoKey { .. })), "two keys fit: kid needed");
        let other = ec_key("a");
        assert!(matches!(set.verify(&sign(&other, Some("a"))), Err(AssertionError::Signature(_))));
    }

    #[test]
    fn without_kid_the_only_fitting_key_is_used() {
        let ec = ec_key("ec");
        let ed = ed_key(None);
        let set = parse_jwks(&json!({"keys": [ec.jwk, ed.jwk]})).unwrap();
        assert!(set.verify(&sign(&ed, None)).is_ok());
        assert!(set.verify(&sign(&ec, None)).is_ok());
    }

    /// A compact JWT signed with Ed25519 under RFC 9864's `alg` name.
    fn sign_ed25519(pair: &Ed25519KeyPair, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg": "Ed25519", "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref()))
    }

    #[test]
    fn ed25519_is_accepted_under_its_fully_specified_name() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let ec = ec_key("ec");
        // The key may name either alg; the header may use either name.
        for key_alg in [None, Some("EdDSA"), Some("Ed25519")] {
            let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": x});
            if let Some(a) = key_alg {
                jwk["alg"] = json!(a);
            }
            let set = parse_jwks(&json!({"keys": [jwk, ec.jwk.clone()]})).unwrap();
            assert_eq!(set.verify(&sign_ed25519(&pair, Some("ed"), &claims())).unwrap()["jti"], "j1", "{key_alg:?}");
            assert_eq!(set.verify(&sign_ed25519(&pair, None, &claims())).unwrap()["jti"], "j1", "the only Ed25519 key");
            let ed =
                TestKey { encoding: EncodingKey::from_ed_der(pkcs8.as_ref()), jwk: json!({}), alg: Algorithm::EdDSA };
            assert!(set.verify(&sign(&ed, Some("ed"))).is_ok(), "EdDSA still accepted");
        }
        let set = parse_jwks(&json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": x}]})).unwrap();
        let token = sign_ed25519(&pair, Some("ed"), &claims());
        let (input, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
        assert!(matches!(set.verify(&forged), Err(AssertionError::Signature(_))));
        let other =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap().as_ref()).unwrap();
        assert!(matches!(set.verify(&sign_ed25519(&other, Some("ed"), &claims())), Err(AssertionError::Signature(_))));
        assert!(matches!(set.verify(&sign_ed25519(&pair, Some("zz"), &claims())), Err(AssertionError::NoKey { .. })));
        assert!(matches!(set.verify(&format!("{token}.x")), Err(AssertionError::Malformed(_))));
        // An Ed25519 header is no way around an EC key's algorithm.
        let ec_only = parse_jwks(&json!({"keys": [ec.jwk.clone()]})).unwrap();
        assert!(matches!(ec_only.verify(&sign_ed25519(&pair, None, &claims())), Err(AssertionError::NoKey { .. })));
    }

    #[test]
    fn none_and_hmac_are_refused() {
        let ec = ec_key("k");
        let set = parse_jwks(&json!({"keys": [ec.jwk.clone()]})).unwrap();
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(matches!(set.verify(&none), Err(AssertionError::Malformed(_))));
        // HS256 keyed with the public key's bytes: the classic confusion attack.
        let secret = ec.jwk["x"].as_str().unwrap().as_bytes().to_vec();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k".into());
        let hs = encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(set.verify(&hs), Err(AssertionError::Alg("HS256".into())));
        assert!(matches!(set.verify("not a jwt"), Err(AssertionError::Malformed(_))));
    }

    #[test]
    fn jwks_settings_are_validated() {
        let ec = ec_key("k");
        assert!(parse_jwks(&json!({"keys": [ec.jwk.clone()]})).is_ok());
        assert!(parse_jwks(&json!(json!({"keys": [ec.jwk.clone()]}).to_string())).is_ok(), "JSON text");
        assert_eq!(
            parse_jwks(&json!("{")).map(|_| ()).unwrap_err().to_string().split(':').next(),
            Some("is not valid JSON")
        );
        assert_eq!(parse_jwks(&json!([ec.jwk.clone()])).unwrap_err(), JwksError::NotASet);
        assert_eq!(parse_jwks(&json!({"keys": []})).unwrap_err(), JwksError::Empty);
        let mut private = ec.jwk.clone();
        private["d"] = json!("AAAA");
        assert!(parse_jwks(&json!({"keys": [private]})).unwrap_err().to_string().contains("private key material"));
        let oct = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(matches!(parse_jwks(&json!({"keys": [oct]})), Err(JwksError::Key { index: 0, .. })));
        let mut enc = ec.jwk.clone();
        enc["use"] = json!("enc");
        assert!(parse_jwks(&json!({"keys": [enc]})).unwrap_err().to_string().contains("encryption"));
        let mut wrong_alg = ec.jwk.clone();
        wrong_alg["alg"] = json!("RS256");
        assert!(parse_jwks(&json!({"keys": [wrong_alg]})).unwrap_err().to_string().contains("does not fit"));
        let small_rsa = json!({"kty": "RSA", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128])});
        assert!(parse_jwks(&json!({"keys": [small_rsa]})).unwrap_err().to_string().contains("1024 bits"));
        assert!(parse_jwks(&json!({"keys": [ec.jwk.clone(), ec.jwk.clone()]}))
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let bad_point = json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"});
        assert!(parse_jwks(&json!({"keys": [{"kty": "EC"}]})).is_err());
        // A point that is not on the curve fails when used, never panics.
        if let Ok(set) = parse_jwks(&json!({"keys": [bad_point]})) {
            assert!(set.verify(&sign(&ec, None)).is_err());
        }
    }

    #[test]
    fn rfc7517_example_public_keys_parse() {
        // The keys fuzz/fuzz_targets/client_assertion.rs verifies against.
        let set = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty": "RSA", "kid": "rsa", "e": "AQAB",
             "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
        ]});
        let parsed = parse_jwks(&set).unwrap();
        assert_eq!(format!("{parsed:?}"), r#"ClientJwks { kids: ["ec", "rsa"] }"#);
    }

    #[test]
    fn claimed_client_reads_sub_then_iss() {
        let ec = ec_key("k");
        assert_eq!(claimed_client(&sign(&ec, None)).as_deref(), Some("c"));
        assert_eq!(claimed_client("a.b.c"), None);
        assert_eq!(claimed_client(""), None);
    }

    #[test]
    fn auth_methods_round_trip() {
        for n in AuthMethod::NAMES {
            assert_eq!(AuthMethod::parse(n).map(AuthMethod::as_str), Some(*n));
        }
        assert_eq!(AuthMethod::parse("client_secret_jwt"), None);
    }
}
