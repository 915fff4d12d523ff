//! Second factors: TOTP authenticators (RFC 6238: SHA1, 6 digits, 30 s, one step of clock
//! tolerance either way, each code accepted once) and static recovery codes (single use,
//! stored hashed). TOTP seeds are encrypted at rest with AES-256-GCM under a key derived from
//! the instance's encryption key, bound to the device id.
//!
//! [`Mfa::verify_code`] is the one place a code is checked, for the flow stage and for the
//! LDAP bind's `password;123456`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::events::{ClientInfo, Events};
use crate::keys::DerivedKey;
use crate::model::{AuthenticatorDevice, DeviceKind, User};
use crate::store::Store;

pub mod remember;
pub mod webauthn;

pub const TOTP_DIGITS: usize = 6;
pub const TOTP_STEP: u64 = 30;
pub const TOTP_SKEW: u8 = 1;
/// Bytes of a new TOTP seed (160 bits, as RFC 4226 recommends).
const SEED_BYTES: usize = 20;
pub const STATIC_CODES: usize = 10;
/// Characters of a recovery code (from a 32-letter alphabet: 60 bits).
const STATIC_CODE_LEN: usize = 12;
const STATIC_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
pub const ISSUER: &str = "Latchkey";
const SECRET_PREFIX: &str = "v1:";

/// What an enrolling user is shown for a TOTP device.
#[derive(Debug, Clone)]
pub struct TotpSetup {
    pub config_url: String,
    pub secret: String,
    pub qr_svg: String,
}

/// Authenticator devices and code checks.
#[derive(Clone)]
pub struct Mfa {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    events: Events,
    cipher: Arc<LessSafeKey>,
    /// Signs "remember this browser" cookies.
    remember_key: DerivedKey,
}

fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(e.to_string())
}

fn totp(seed: Vec<u8>) -> Result<TOTP> {
    TOTP::new(Algorithm::SHA1, TOTP_DIGITS, TOTP_SKEW, TOTP_STEP, seed).map_err(internal)
}

/// Hash of a recovery code at rest (the codes are random and high-entropy: SHA-256 suffices).
fn hash_code(code: &str) -> String {
    hex::encode(Sha256::digest(normalize_static(code).as_bytes()))
}

fn normalize_static(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

fn new_static_code() -> String {
    let mut rng = rand::thread_rng();
    let raw: String =
        (0..STATIC_CODE_LEN).map(|_| STATIC_ALPHABET[rng.gen_range(0..STATIC_ALPHABET.len())] as char).collect();
    format!("{}-{}-{}", &raw[0..4], &raw[4..8], &raw[8..12])
}

/// The `otpauth://` URL authenticator apps read from the QR code.
pub fn otpauth_url(issuer: &str, account: &str, secret_b32: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20");
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP}",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

/// A QR code of `data` as a standalone SVG document.
pub fn qr_svg(data: &str) -> Result<String> {
    let code = qrcode::QrCode::new(data.as_bytes()).map_err(internal)?;
    Ok(code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build())
}

impl Mfa {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, events: Events, encryption: &DerivedKey) -> Result<Self> {
        // A subkey of its own, so these ciphertexts never share a key with other purposes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(encryption.bytes()).map_err(internal)?;
        mac.update(b"latchkey/v1/authenticator-secrets");
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| internal("bad encryption key"))?;
        let remember_key = encryption.subkey(b"latchkey/v1/remember-browser");
        Ok(Mfa { store, clock, events, cipher: Arc::new(LessSafeKey::new(unbound)), remember_key })
    }

    fn seal(&self, device_id: Uuid, plain: &[u8]) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| internal("no randomness"))?;
        let mut buf = plain.to_vec();
        self.cipher
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(device_id.as_bytes()), &mut buf)
            .map_err(|_| internal("could not encrypt an authenticator secret"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(out)))
    }

    fn open(&self, device: &AuthenticatorDevice) -> Result<Vec<u8>> {
        let corrupt = || internal(format!("authenticator {}: the secret cannot be decrypted", device.id));
        let sealed = device.secret.as_deref().and_then(|s| s.strip_prefix(SECRET_PREFIX)).ok_or_else(corrupt)?;
        let raw = STANDARD.decode(sealed).map_err(|_| corrupt())?;
        if raw.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt())?;
        let mut buf = ct.to_vec();
        let plain = self
            .cipher
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(device.id.as_bytes()), &mut buf)
            .map_err(|_| corrupt())?;
        Ok(plain.to_vec())
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub async fn list(&self, user_id: Uuid) -> Result<Vec<AuthenticatorDevice>> {
        self.store.list_devices(user_id).await.map_err(CoreError::from_store)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<AuthenticatorDevice>> {
        self.store.get_device(id).await.map_err(CoreError::from_store)
    }

    /// The kinds of the user's confirmed devices, in a stable order, without repeats.
    pub async fn configured_kinds(&self, user_id: Uuid) -> Result<Vec<DeviceKind>> {
        let mut kinds: Vec<DeviceKind> =
            self.list(user_id).await?.into_iter().filter(|d| d.confirmed).map(|d| d.kind).collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds.dedup();
        Ok(kinds)
    }

    /// A new, unconfirmed TOTP device with a random seed.
    pub async fn begin_totp(&self, user: &User, name: &str) -> Result<AuthenticatorDevice> {
        let mut seed = vec![0u8; SEED_BYTES];
        SystemRandom::new().fill(&mut seed).map_err(|_| internal("no randomness"))?;
        let id = Uuid::now_v7();
        let device = AuthenticatorDevice {
            id,
            user_id: user.id,
            kind: DeviceKind::Totp,
            name: name.to_string(),
            secret: Some(self.seal(id, &seed)?),
            data: json!({}),
            confirmed: false,
            created_at: self.now(),
            last_used_at: None,
            last_step: None,
        };
        self.store.create_device(&device).await.map_err(CoreError::from_store)?;
        Ok(device)
    }

    /// The URL, secret and QR code of a TOTP device, for enrollment.
    pub fn totp_setup(&self, device: &AuthenticatorDevice, account: &str) -> Result<TotpSetup> {
        let secret = totp(self.open(device)?)?.get_secret_base32();
        let config_url = otpauth_url(ISSUER, account, &secret);
        let qr_svg = qr_svg(&config_url)?;
        Ok(TotpSetup { config_url, secret, qr_svg })
    }

    /// The time step whose code `code` is, within the allowed clock skew.
    fn totp_step(&self, device: &AuthenticatorDevice, code: &str) -> Result<Option<i64>> {
        let code = code.trim();
        if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let t = totp(self.open(device)?)?;
        let now = self.now().timestamp().max(0) as u64;
        let current = now / TOTP_STEP;
        let mut found = None;
        for step in current.saturating_sub(TOTP_SKEW as u64)..=current + TOTP_SKEW as u64 {
            let expected = t.generate(step * TOTP_STEP);
            // Every candidate is compared, in constant time.
            if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                found = Some(step as i64);
            }
        }
        Ok(found)
    }

    /// Checks a code against a TOTP device and uses it up (replay protection).
    async fn use_totp(&self, device: &AuthenticatorDevice, code: &str) -> Result<bool> {
        let Some(step) = self.totp_step(device, code)? else {
            return Ok(false);
        };
        self.store.record_totp_step(device.id, step, self.now()).await.map_err(CoreError::from_store)
    }

    /// Confirms an enrolling TOTP device with a valid code, naming it. `false` for a wrong code.
    pub async fn confirm_totp(&self, device_id: Uuid, user: &User, code: &str, name: &str) -> Result<bool> {
        let Some(mut device) = self.get(device_id).await? else {
            return Ok(false);
        };
        if device.user_id != user.id || device.kind != DeviceKind::Totp || device.confirmed {
            return Ok(false);
        }
        if !self.use_totp(&device, code).await? {
            return Ok(false);
        }
        device.confirmed = true;
        if !name.trim().is_empty() {
            device.name = name.trim().chars().take(100).collect();
        }
        device.last_used_at = Some(self.now());
        self.store.update_device(&device).await.map_err(CoreError::from_store)?;
        // Leftovers of abandoned enrollments go.
        for other in self.list(user.id).await? {
            if other.kind == DeviceKind::Totp && !other.confirmed && other.id != device.id {
                self.store.delete_device(other.id).await.map_err(CoreError::from_store)?;
            }
        }
        self.events
            .record(
                "mfa_device_added",
                Some(user),
                &ClientInfo::default(),
                json!({ "device": device.id, "kind": "totp", "name": device.name }),
            )
            .await;
        Ok(true)
    }

    /// A new, unconfirmed set of recovery codes; returns the device and the codes in clear (shown once).
    pub async fn begin_static(&self, user: &User) -> Result<(AuthenticatorDevice, Vec<String>)> {
        let codes: Vec<String> = (0..STATIC_CODES).map(|_| new_static_code()).collect();
        let data = json!({ "codes": codes.iter().map(|c| json!({ "hash": hash_code(c), "used": false })).collect::<Vec<_>>() });
        let device = AuthenticatorDevice {
            id: Uuid::now_v7(),
            user_id: user.id,
            kind: DeviceKind::Static,
            name: "Recovery codes".into(),
            secret: None,
            data,
            confirmed: false,
            created_at: self.now(),
            last_used_at: None,
            last_step: None,
        };
        self.store.create_device(&device).await.map_err(CoreError::from_store)?;
        Ok((device, codes))
    }

    /// Confirms a set of recovery codes; it replaces any earlier set of the user.
    pub async fn confirm_static(&self, device_id: Uuid, user: &User) -> Result<bool> {
        let Some(mut device) = self.get(device_id).await? else {
            return Ok(false);
        };
        if device.user_id != user.id || device.kind != DeviceKind::Static {
            return Ok(false);
        }
        if device.confirmed {
            return Ok(true);
        }
        device.confirmed = true;
        self.store.update_device(&device).await.map_err(CoreError::from_store)?;
        for other in self.list(user.id).await? {
            if other.kind == DeviceKind::Static && other.id != device.id {
                self.store.delete_device(other.id).await.map_err(CoreError::from_store)?;
            }
        }
        self.events
            .record(
                "mfa_device_added",
                Some(user),
                &ClientInfo::default(),
                json!({ "device": device.id, "kind": "static", "name": device.name }),
            )
            .await;
        Ok(true)
    }

    /// Uses up the recovery code `code` of a static device, atomically.
    async fn use_static(&self, device: &AuthenticatorDevice, code: &str) -> Result<bool> {
        let wanted = hash_code(code);
        if normalize_static(code).len() != STATIC_CODE_LEN {
            return Ok(false);
        }
        let mut data = device.data.clone();
        let Some(codes) = data.get_mut("codes").and_then(Value::as_array_mut) else {
            return Ok(false);
        };
        let Some(entry) = codes.iter_mut().find(|c| {
            c.get("used").and_then(Value::as_bool) == Some(false)
                && c.get("hash")
                    .and_then(Value::as_str)
                    .is_some_and(|h| bool::from(h.as_bytes().ct_eq(wanted.as_bytes())))
        }) else {
            return Ok(false);
        };
        entry["used"] = json!(true);
        self.store.replace_device_data(device.id, &device.data, &data, self.now()).await.map_err(CoreError::from_store)
    }

    /// Checks a code for the user: a TOTP code of any confirmed TOTP device (each code once),
    /// else an unused recovery code (then used up). Which kind of device took it, or `None`.
    pub async fn verify_code(&self, user: &User, code: &str) -> Result<Option<DeviceKind>> {
        self.verify_code_of(user, code, &[DeviceKind::Totp, DeviceKind::Static]).await
    }

    /// [`Mfa::verify_code`] limited to the device kinds in `allowed` (a stage's device classes).
    pub async fn verify_code_of(&self, user: &User, code: &str, allowed: &[DeviceKind]) -> Result<Option<DeviceKind>> {
        let devices: Vec<AuthenticatorDevice> =
            self.list(user.id).await?.into_iter().filter(|d| d.confirmed && allowed.contains(&d.kind)).collect();
        for device in devices.iter().filter(|d| d.kind == DeviceKind::Totp) {
            if self.use_totp(device, code).await? {
                return Ok(Some(DeviceKind::Totp));
            }
        }
        for device in devices.iter().filter(|d| d.kind == DeviceKind::Static) {
            if self.use_static(device, code).await? {
                return Ok(Some(DeviceKind::Static));
            }
        }
        Ok(None)
    }

    /// Removes one of the user's devices (admin or self-service), audited.
    pub async fn remove(&self, user: &User, device_id: Uuid, client: &ClientInfo) -> Result<AuthenticatorDevice> {
        let device = self
            .get(device_id)
            .await?
            .filter(|d| d.user_id == user.id)
            .ok_or_else(|| CoreError::NotFound(format!("authenticator device {device_id} of {}", user.username)))?;
        self.store.delete_device(device.id).await.map_err(CoreError::from_store)?;
        self.events
            .record(
                "mfa_device_removed",
                Some(user),
                client,
                json!({ "device": device.id, "kind": device.kind, "name": device.name }),
            )
            .await;
        Ok(device)
    }

    /// The number of unused codes of a static device.
    pub fn remaining_codes(device: &AuthenticatorDevice) -> usize {
        device
            .data
            .get("codes")
            .and_then(Value::as_array)
            .map_or(0, |a| a.iter().filter(|c| c.get("used").and_then(Value::as_bool) == Some(false)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otpauth_url_is_what_apps_expect() {
        let url = otpauth_url("Latchkey", "ann lee", "JBSWY3DPEHPK3PXP");
        assert_eq!(
            url,
            "otpauth://totp/Latchkey:ann%20lee?secret=JBSWY3DPEHPK3PXP&issuer=Latchkey&algorithm=SHA1&digits=6&period=30"
        );
        assert!(qr_svg(&url).unwrap().contains("<svg"));
    }

    #[test]
    fn rfc6238_vector() {
        // RFC 6238 appendix B, SHA1, T = 59 s, truncated to 6 digits.
        let t = totp(b"12345678901234567890".to_vec()).unwrap();
        assert_eq!(t.generate(59), "287082");
        assert_eq!(t.generate(1111111109), "081804");
    }

    #[test]
    fn static_codes_normalize() {
        let code = new_static_code();
        assert_eq!(code.len(), 14);
        assert_eq!(hash_code(&code), hash_code(&code.to_uppercase().replace('-', " ")));
        assert_ne!(hash_code(&code), hash_code(&new_static_code()));
    }
}
