//! WebAuthn security keys and passkeys (webauthn-rs): registration, use as a second factor,
//! and passwordless login with discoverable credentials.
//!
//! The relying party is the origin users reach this instance under (the configured external
//! URL, else the request's host): its host is the RP id. Ceremony state is serialised into the
//! flow state (server-side), never sent to the browser. A device's `data` holds the credential
//! (public key, signature counter, flags) as webauthn-rs serialises it, plus its id for lookup.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, DiscoverableKey, Passkey, PublicKeyCredential, RegisterPublicKeyCredential,
    SecurityKey, SecurityKeyAuthentication, SecurityKeyRegistration, Url, Webauthn, WebauthnBuilder, WebauthnError,
};

use super::{internal, Mfa};
use crate::error::{CoreError, Result};
use crate::events::ClientInfo;
use crate::model::{AuthenticatorDevice, DeviceKind, User};

/// Registration preferences of a setup stage (the names follow authentik's stage settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationSettings {
    /// `required`, `preferred` or `discouraged`.
    pub user_verification: String,
    /// `required`, `preferred` or `discouraged`: passkeys are discoverable ("resident") keys.
    pub resident_key_requirement: String,
    /// `platform`, `cross-platform` or none.
    pub authenticator_attachment: Option<String>,
}

impl Default for RegistrationSettings {
    fn default() -> Self {
        RegistrationSettings {
            user_verification: "preferred".into(),
            resident_key_requirement: "preferred".into(),
            authenticator_attachment: None,
        }
    }
}

impl RegistrationSettings {
    /// Reads the settings from a stage configuration, refusing unknown values.
    pub fn from_config(config: &Value) -> Result<Self> {
        let pick = |key: &str, allowed: &[&str], default: &str| -> Result<String> {
            let value = config.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
            if allowed.contains(&value.as_str()) {
                Ok(value)
            } else {
                Err(CoreError::invalid_field(key, format!("{key} must be one of {}", allowed.join(", "))))
            }
        };
        let levels = ["required", "preferred", "discouraged"];
        let attachment = match config.get("authenticator_attachment").and_then(Value::as_str) {
            None | Some("") => None,
            Some(a @ ("platform" | "cross-platform")) => Some(a.to_string()),
            Some(_) => {
                return Err(CoreError::invalid_field(
                    "authenticator_attachment",
                    "authenticator_attachment must be platform or cross-platform",
                ))
            }
        };
        Ok(RegistrationSettings {
            user_verification: pick("user_verification", &levels, "preferred")?,
            resident_key_requirement: pick("resident_key_requirement", &levels, "preferred")?,
            authenticator_attachment: attachment,
        })
    }
}

/// The outcome of checking a WebAuthn answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebauthnCheck {
    /// Verified: the device used and the RFC 8176 method (`hwk` for a device-bound key,
    /// `swk` for a synced passkey) and whether the user was verified (PIN, biometrics).
    Verified { device_id: Uuid, method: &'static str, user_verified: bool },
    /// Well-formed but not valid (wrong signature, unknown key, stale challenge, counter…).
    Refused,
    /// Not a WebAuthn credential at all: the caller answers 400 with this reason.
    Malformed(String),
}

/// The outcome of a passwordless login.
#[derive(Debug, Clone)]
pub enum PasswordlessCheck {
    Verified { user: Box<User>, device_id: Uuid, method: &'static str },
    Refused,
    Malformed(String),
}

const CREDENTIAL_ID: &str = "credential_id";
const KEY: &str = "key";

fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("not a WebAuthn credential: {}", e.inner())
        } else {
            format!("not a WebAuthn credential: {path}: {}", e.inner())
        }
    })
}

/// The relying party for an origin (`scheme://host[:port]`). `None` when browsers would refuse
/// WebAuthn there (an IP address or a non-HTTPS host other than localhost).
pub fn relying_party(origin: &str) -> Option<Webauthn> {
    let url = Url::parse(origin).ok()?;
    let host = url.host_str()?.to_string();
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return None;
    }
    let secure = url.scheme() == "https" || host == "localhost" || host.ends_with(".localhost");
    if !secure {
        return None;
    }
    WebauthnBuilder::new(&host, &url).ok()?.rp_name(super::ISSUER).build().ok()
}

fn device_key(device: &AuthenticatorDevice) -> Option<SecurityKey> {
    serde_json::from_value(device.data.get(KEY)?.clone()).ok()
}

/// `hwk` for keys bound to one device, `swk` for passkeys that sync between devices.
fn method_of(data: &Value) -> &'static str {
    let backup_eligible = data.pointer("/key/cred/backup_eligible").and_then(Value::as_bool).unwrap_or(false);
    if backup_eligible {
        "swk"
    } else {
        "hwk"
    }
}

impl Mfa {
    /// The user's confirmed WebAuthn devices.
    async fn webauthn_devices(&self, user_id: Uuid) -> Result<Vec<AuthenticatorDevice>> {
        Ok(self.list(user_id).await?.into_iter().filter(|d| d.confirmed && d.kind == DeviceKind::Webauthn).collect())
    }

    /// Starts registering a security key or passkey for `user`. Returns the options for
    /// `navigator.credentials.create` (`{"publicKey": …}`) and the state to keep server-side.
    /// `None` when WebAuthn is impossible under this origin.
    pub async fn begin_webauthn_registration(
        &self,
        origin: &str,
        user: &User,
        settings: &RegistrationSettings,
    ) -> Result<Option<(Value, Value)>> {
        let Some(rp) = relying_party(origin) else {
            return Ok(None);
        };
        let existing: Vec<_> =
            self.webauthn_devices(user.id).await?.iter().filter_map(device_key).map(|k| k.cred_id().clone()).collect();
        let display = if user.name.trim().is_empty() { user.username.as_str() } else { user.name.as_str() };
        let (options, state) = rp
            .start_securitykey_registration(user.id, &user.username, display, Some(existing), None, None)
            .map_err(internal)?;
        let mut options = serde_json::to_value(&options).map_err(internal)?;
        let public_key =
            options.get_mut("publicKey").and_then(Value::as_object_mut).ok_or_else(|| internal("options"))?;
        // webauthn-rs asks for a non-discoverable security key; the stage's settings decide.
        let mut selection = json!({
            "residentKey": settings.resident_key_requirement,
            "requireResidentKey": settings.resident_key_requirement == "required",
            "userVerification": settings.user_verification,
        });
        if let Some(attachment) = &settings.authenticator_attachment {
            selection["authenticatorAttachment"] = json!(attachment);
        }
        public_key.insert("authenticatorSelection".into(), selection);
        if settings.user_verification != "required" {
            // Browsers refuse credProtect "userVerificationRequired" unless verification is
            // required; "optional with credential id list" still keeps a discoverable key
            // from being listed without verification.
            if let Some(ext) = public_key.get_mut("extensions").and_then(Value::as_object_mut) {
                ext.insert("credentialProtectionPolicy".into(), json!("userVerificationOptionalWithCredentialIDList"));
            }
        }
        // Leave the choice between a platform passkey and a USB key to the browser.
        public_key.remove("hints");
        let mut state = serde_json::to_value(&state).map_err(internal)?;
        // The state's policy is what finish checks: "required" must bind, and webauthn-rs's
        // "preferred" still holds a key to the verification it showed at registration.
        if settings.user_verification == "required" {
            if let Some(policy) = state.pointer_mut("/rs/policy") {
                *policy = json!("required");
            }
        }
        Ok(Some((options, state)))
    }

    /// Finishes a registration with the browser's answer (the attestation); on success the
    /// device is stored, confirmed and named, and the addition audited.
    pub async fn finish_webauthn_registration(
        &self,
        origin: &str,
        user: &User,
        state: &Value,
        response: &Value,
        name: &str,
        client: &ClientInfo,
    ) -> Result<std::result::Result<AuthenticatorDevice, WebauthnCheck>> {
        let credential: RegisterPublicKeyCredential = match parse(response) {
            Ok(c) => c,
            Err(reason) => return Ok(Err(WebauthnCheck::Malformed(reason))),
        };
        let (Some(rp), Ok(state)) =
            (relying_party(origin), serde_json::from_value::<SecurityKeyRegistration>(state.clone()))
        else {
            return Ok(Err(WebauthnCheck::Refused));
        };
        let key = match rp.finish_securitykey_registration(&credential, &state) {
            Ok(key) => key,
            Err(e) => {
                tracing::info!(user = %user.username, error = %e, "WebAuthn registration refused");
                return Ok(Err(WebauthnCheck::Refused));
            }
        };
        let credential_id = URL_SAFE_NO_PAD.encode(key.cred_id().as_ref());
        if self
            .webauthn_devices(user.id)
            .await?
            .iter()
            .any(|d| d.data.get(CREDENTIAL_ID) == Some(&json!(credential_id)))
        {
            return Ok(Err(WebauthnCheck::Refused));
        }
        let name = name.trim();
        let name: String = if name.is_empty() { "Security key".into() } else { name.chars().take(100).collect() };
        let device = AuthenticatorDevice {
            id: Uuid::now_v7(),
            user_id: user.id,
            kind: DeviceKind::Webauthn,
            name,
            secret: None,
            data: json!({ CREDENTIAL_ID: credential_id, KEY: serde_json::to_value(&key).map_err(internal)? }),
            confirmed: true,
            created_at: self.now(),
            last_used_at: None,
            last_step: None,
        };
        self.store.create_device(&device).await.map_err(CoreError::from_store)?;
        self.events
            .record(
                "mfa_device_added",
                Some(user),
                client,
                json!({ "device": device.id, "kind": "webauthn", "name": device.name, "method": method_of(&device.data) }),
            )
            .await;
        Ok(Ok(device))
    }

    /// A challenge for the user's keys as a second factor: options for
    /// `navigator.credentials.get` and the state to keep. `None` without keys or relying party.
    pub async fn begin_webauthn_authentication(&self, origin: &str, user: &User) -> Result<Option<(Value, Value)>> {
        let Some(rp) = relying_party(origin) else {
            return Ok(None);
        };
        let keys: Vec<SecurityKey> = self.webauthn_devices(user.id).await?.iter().filter_map(device_key).collect();
        if keys.is_empty() {
            return Ok(None);
        }
        let (options, state) = rp.start_securitykey_authentication(&keys).map_err(internal)?;
        let mut options = serde_json::to_value(&options).map_err(internal)?;
        if let Some(public_key) = options.get_mut("publicKey").and_then(Value::as_object_mut) {
            // Platform passkeys as well as USB keys.
            public_key.remove("hints");
        }
        Ok(Some((options, serde_json::to_value(&state).map_err(internal)?)))
    }

    /// Checks a second-factor assertion against the state of [`Mfa::begin_webauthn_authentication`].
    pub async fn verify_webauthn(
        &self,
        origin: &str,
        user: &User,
        state: &Value,
        response: &Value,
        client: &ClientInfo,
    ) -> Result<WebauthnCheck> {
        let credential: PublicKeyCredential = match parse(response) {
            Ok(c) => c,
            Err(reason) => return Ok(WebauthnCheck::Malformed(reason)),
        };
        let (Some(rp), Ok(state)) =
            (relying_party(origin), serde_json::from_value::<SecurityKeyAuthentication>(state.clone()))
        else {
            return Ok(WebauthnCheck::Refused);
        };
        let Some(device) = self.device_for(user.id, credential.get_credential_id()).await? else {
            return Ok(WebauthnCheck::Refused);
        };
        let outcome = rp.finish_securitykey_authentication(&credential, &state);
        self.conclude(user, &device, outcome, client).await
    }

    /// Starts a passwordless login: options for `navigator.credentials.get` (with
    /// `mediation: "conditional"` for passkey autofill) and the state to keep.
    pub fn begin_passwordless(&self, origin: &str) -> Result<Option<(Value, Value)>> {
        let Some(rp) = relying_party(origin) else {
            return Ok(None);
        };
        let (options, state) = rp.start_discoverable_authentication().map_err(internal)?;
        Ok(Some((serde_json::to_value(&options).map_err(internal)?, serde_json::to_value(&state).map_err(internal)?)))
    }

    /// Checks a passwordless assertion: the credential names its user (user handle), whose
    /// stored key must verify it with user verification.
    pub async fn verify_passwordless(
        &self,
        origin: &str,
        state: &Value,
        response: &Value,
        client: &ClientInfo,
    ) -> Result<PasswordlessCheck> {
        let credential: PublicKeyCredential = match parse(response) {
            Ok(c) => c,
            Err(reason) => return Ok(PasswordlessCheck::Malformed(reason)),
        };
        let (Some(rp), Ok(state)) =
            (relying_party(origin), serde_json::from_value::<DiscoverableAuthentication>(state.clone()))
        else {
            return Ok(PasswordlessCheck::Refused);
        };
        let Ok((user_id, credential_id)) = rp.identify_discoverable_authentication(&credential) else {
            return Ok(PasswordlessCheck::Refused);
        };
        let Some(user) = self.store.get_user(user_id).await.map_err(CoreError::from_store)? else {
            return Ok(PasswordlessCheck::Refused);
        };
        if !user.is_active || user.kind != crate::model::UserKind::Internal {
            return Ok(PasswordlessCheck::Refused);
        }
        let Some(device) = self.device_for(user.id, credential_id).await? else {
            return Ok(PasswordlessCheck::Refused);
        };
        let Some(key) = device_key(&device) else {
            return Ok(PasswordlessCheck::Refused);
        };
        // The same stored credential, as the discoverable type webauthn-rs wants here.
        let passkey: Passkey =
            serde_json::from_value(serde_json::to_value(&key).map_err(internal)?).map_err(internal)?;
        let outcome = rp.finish_discoverable_authentication(&credential, state, &[DiscoverableKey::from(&passkey)]);
        Ok(match self.conclude(&user, &device, outcome, client).await? {
            WebauthnCheck::Verified { device_id, method, .. } => {
                PasswordlessCheck::Verified { user: Box::new(user), device_id, method }
            }
            WebauthnCheck::Refused => PasswordlessCheck::Refused,
            WebauthnCheck::Malformed(reason) => PasswordlessCheck::Malformed(reason),
        })
    }

    async fn device_for(&self, user_id: Uuid, credential_id: &[u8]) -> Result<Option<AuthenticatorDevice>> {
        let wanted = json!(URL_SAFE_NO_PAD.encode(credential_id));
        Ok(self.webauthn_devices(user_id).await?.into_iter().find(|d| d.data.get(CREDENTIAL_ID) == Some(&wanted)))
    }

    /// Records the result of an assertion: the new signature counter is stored by
    /// compare-and-swap (two concurrent uses of one counter value cannot both pass); a counter
    /// that did not increase is refused and audited as a possibly cloned key.
    async fn conclude(
        &self,
        user: &User,
        device: &AuthenticatorDevice,
        outcome: std::result::Result<webauthn_rs::prelude::AuthenticationResult, WebauthnError>,
        client: &ClientInfo,
    ) -> Result<WebauthnCheck> {
        let result = match outcome {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                self.events
                    .record(
                        "mfa_webauthn_counter_regressed",
                        Some(user),
                        client,
                        json!({ "device": device.id, "name": device.name, "stored_counter": device.data.pointer("/key/cred/counter") }),
                    )
                    .await;
                return Ok(WebauthnCheck::Refused);
            }
            Err(e) => {
                tracing::info!(user = %user.username, error = %e, "WebAuthn assertion refused");
                return Ok(WebauthnCheck::Refused);
            }
        };
        let Some(mut key) = device_key(device) else {
            return Ok(WebauthnCheck::Refused);
        };
        key.update_credential(&result);
        let mut data = device.data.clone();
        data[KEY] = serde_json::to_value(&key).map_err(internal)?;
        if !self
            .store
            .replace_device_data(device.id, &device.data, &data, self.now())
            .await
            .map_err(CoreError::from_store)?
        {
            return Ok(WebauthnCheck::Refused);
        }
        Ok(WebauthnCheck::Verified {
            device_id: device.id,
            method: method_of(&data),
            user_verified: result.user_verified(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relying_party_needs_a_secure_context() {
        assert!(relying_party("http://localhost:9000").is_some());
        assert!(relying_party("https://auth.example.com").is_some());
        assert!(relying_party("http://auth.example.com").is_none());
        assert!(relying_party("http://127.0.0.1:9000").is_none());
        assert!(relying_party("not a url").is_none());
    }

    #[test]
    fn settings_are_checked() {
        let s = RegistrationSettings::from_config(&json!({})).unwrap();
        assert_eq!(s, RegistrationSettings::default());
        let s = RegistrationSettings::from_config(
            &json!({ "resident_key_requirement": "required", "authenticator_attachment": "platform" }),
        )
        .unwrap();
        assert_eq!(s.resident_key_requirement, "required");
        assert_eq!(s.authenticator_attachment.as_deref(), Some("platform"));
        assert!(RegistrationSettings::from_config(&json!({ "user_verification": "always" })).is_err());
        assert!(RegistrationSettings::from_config(&json!({ "authenticator_attachment": "usb" })).is_err());
    }

    #[test]
    fn synced_passkeys_are_software_keys() {
        assert_eq!(method_of(&json!({ "key": { "cred": { "backup_eligible": true } } })), "swk");
        assert_eq!(method_of(&json!({ "key": { "cred": { "backup_eligible": false } } })), "hwk");
        assert_eq!(method_of(&json!({})), "hwk");
    }

    #[test]
    fn the_relying_party_id_is_the_host() {
        let rp = relying_party("https://auth.example.com").unwrap();
        let (options, _) = rp.start_securitykey_registration(Uuid::now_v7(), "ann", "Ann", None, None, None).unwrap();
        let v = serde_json::to_value(&options).unwrap();
        assert_eq!(v.pointer("/publicKey/rp/id"), Some(&json!("auth.example.com")));
    }

    #[test]
    fn malformed_credentials_are_named() {
        let err = parse::<PublicKeyCredential>(&json!({ "id": 5 })).unwrap_err();
        assert!(err.starts_with("not a WebAuthn credential"), "{err}");
    }
}
