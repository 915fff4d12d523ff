//! Token signing: what one ID or access token costs to sign, with the key as `Signing` holds it
//! (parsed once; RSA through OpenSSL) against `jsonwebtoken::encode` (ring, which parses the
//! key for every token), in the same run.
//!
//! cargo bench -p latchkey-core --bench signing

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use latchkey_core::signing::SigningKey;

fn signing(c: &mut Criterion) {
    // An ID token's worth of claims.
    let claims = json!({
        "iss": "https://auth.example.test/application/o/grafana/", "sub": "0193e0b4c1d27c3f9a1b2c3d4e5f6a7b",
        "aud": "grafana", "azp": "grafana", "iat": 1_800_000_000, "exp": 1_800_000_300, "auth_time": 1_799_999_000,
        "acr": "goauthentik.io/providers/oauth2/default", "amr": ["pwd", "otp", "mfa"],
        "preferred_username": "alice", "name": "Alice Example", "email": "alice@example.test",
        "email_verified": true, "groups": ["family", "grafana-admins"], "nonce": "n-0S6_WzA2Mj",
        "at_hash": "77QmUPtjPfzWtF2AnpK9RQ", "sid": "f3c1e9b2a7d64e0f",
    });
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap().private_key_to_der().unwrap();
    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    for (alg, der, reference) in [
        (Algorithm::RS256, rsa.clone(), EncodingKey::from_rsa_der(&rsa)),
        (Algorithm::ES256, ec.as_ref().to_vec(), EncodingKey::from_ec_der(ec.as_ref())),
    ] {
        let key = SigningKey::from_private(alg, &der).unwrap();
        let mut header = Header::new(alg);
        header.kid = Some(key.kid.clone());
        c.bench_function(&format!("{alg:?} sign: Latchkey (key parsed once)"), |b| {
            b.iter(|| key.sign(black_box(&header), black_box(&claims)).unwrap())
        });
        c.bench_function(&format!("{alg:?} sign: jsonwebtoken::encode (ring)"), |b| {
            b.iter(|| jsonwebtoken::encode(black_box(&header), black_box(&claims), &reference).unwrap())
        });
    }
}

criterion_group!(benches, signing);
criterion_main!(benches);
