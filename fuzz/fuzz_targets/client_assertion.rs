//! Untrusted `client_assertion` JWTs (private_key_jwt): reading the claimed client, checking
//! the signature against a client's JWKS and checking the claims must refuse, never panic.
#![no_main]

use latchkey_core::oauth::assertion::{check_claims, claimed_client, parse_jwks};
use libfuzzer_sys::fuzz_target;

// A P-256 public key and a 2048-bit RSA public key (RFC 7517 appendix A.1 and A.2 shapes).
const JWKS: &str = r#"{"keys": [
  {"kty": "EC", "crv": "P-256", "kid": "ec",
   "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
  {"kty": "RSA", "kid": "rsa", "e": "AQAB",
   "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = claimed_client(text);
    let jwks = parse_jwks(&serde_json::Value::String(JWKS.into())).expect("the fixed JWKS parses");
    let _ = jwks.verify(text);
    if let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = check_claims(&claims, "c", &["https://id.test/application/o/token/".into()], 1_700_000_000);
    }
});
