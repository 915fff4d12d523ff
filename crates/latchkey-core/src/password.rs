//! Password hashing: argon2id for new hashes; imported hashes (argon2i, bcrypt, Django
//! pbkdf2_sha256, sha512-crypt) verify and are flagged for upgrade.
//!
//! Hashing is deliberately slow, so it never runs on the async runtime: a fixed pool of
//! low-priority threads (one per core) does it, and a burst of logins queues there instead
//! of delaying requests that need no hash (principle 4 of the design).

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use std::sync::{mpsc, Arc, Mutex};
use subtle::ConstantTimeEq;

use crate::error::CoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's recommendation: m=19 MiB, t=2, p=1.
    fn default() -> Self {
        Argon2Settings { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub valid: bool,
    /// The hash is valid but not argon2id with the current parameters: replace it.
    pub needs_rehash: bool,
}

const INVALID: Verification = Verification { valid: false, needs_rehash: false };

/// Pure hashing functions; [`PasswordHasher`] runs them off the runtime.
#[derive(Debug, Clone)]
pub struct HashAlgorithms {
    settings: Argon2Settings,
    argon2: Argon2<'static>,
}

impl HashAlgorithms {
    pub fn new(settings: Argon2Settings) -> Result<Self, CoreError> {
        let params = Params::new(settings.memory_kib, settings.iterations, settings.parallelism, None)
            .map_err(|e| CoreError::invalid(format!("invalid argon2 parameters: {e}")))?;
        Ok(HashAlgorithms { settings, argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params) })
    }

    pub fn hash(&self, password: &str) -> Result<String, CoreError> {
        let salt = SaltString::generate(&mut rand::thread_rng());
        self.argon2
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| CoreError::Internal(format!("argon2 hashing failed: {e}")))
    }

    pub fn verify(&self, password: &str, stored: &str) -> Verification {
        if stored.starts_with("$argon2") {
            self.verify_argon2(password, stored)
        } else if stored.starts_with("$2b$") || stored.starts_with("$2y$") || stored.starts_with("$2a$") {
            legacy(bcrypt::verify(password, stored).unwrap_or(false))
        } else if stored.starts_with("pbkdf2_sha256$") {
            legacy(verify_django_pbkdf2(password, stored))
        } else if stored.starts_with("$6$") {
            legacy(sha_crypt::sha512_check(password, stored).is_ok())
        } else {
            INVALID
        }
    }

    fn verify_argon2(&self, password: &str, stored: &str) -> Verification {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return INVALID;
        };
        // Verification uses the parameters stored in the hash, whatever the algorithm variant.
        if Argon2::default().verify_password(password.as_bytes(), &parsed).is_err() {
            return INVALID;
        }
        let current = parsed.algorithm.as_str() == "argon2id"
            && Params::try_from(&parsed)
                .map(|p| {
                    p.m_cost() == self.settings.memory_kib
                        && p.t_cost() == self.settings.iterations
                        && p.p_cost() == self.settings.parallelism
                })
                .unwrap_or(false);
        Verification { valid: true, needs_rehash: !current }
    }
}

fn legacy(valid: bool) -> Verification {
    Verification { valid, needs_rehash: valid }
}

/// Django's `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`, as authentik stores passwords.
fn verify_django_pbkdf2(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(_), Some(iterations), Some(salt), Some(expected), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(iterations) = iterations.parse::<u32>() else {
        return false;
    };
    if iterations == 0 || iterations > 10_000_000 {
        return false;
    }
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(expected) else {
        return false;
    };
    if expected.len() != 32 {
        return false;
    }
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), salt.as_bytes(), iterations, &mut out);
    out.ct_eq(&expected[..]).into()
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs hashing on a bounded pool of low-priority threads.
#[derive(Clone)]
pub struct PasswordHasher {
    algorithms: Arc<HashAlgorithms>,
    jobs: mpsc::Sender<Job>,
    /// A real argon2id hash of a random password, verified for unknown users so that a
    /// missing account takes as long as a wrong password.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").field("settings", &self.algorithms.settings).finish()
    }
}

impl PasswordHasher {
    /// `threads`: at most this many hashes at once (one per core is the intent).
    pub fn new(settings: Argon2Settings, threads: usize) -> Result<Self, CoreError> {
        let algorithms = Arc::new(HashAlgorithms::new(settings)?);
        let dummy_hash: Arc<str> = algorithms.hash(&crate::keys::random_secret(16))?.into();
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("latchkey-hash-{i}"))
                .spawn(move || {
                    lower_thread_priority();
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // every sender dropped: shut down
                        }
                    }
                })
                .map_err(|e| CoreError::Internal(format!("cannot start hashing thread: {e}")))?;
        }
        Ok(PasswordHasher { algorithms, jobs: tx, dummy_hash })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&HashAlgorithms) -> T + Send + 'static,
    ) -> Result<T, CoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let algorithms = Arc::clone(&self.algorithms);
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f(&algorithms));
            }))
            .map_err(|_| CoreError::Internal("password hashing pool stopped".into()))?;
        rx.await.map_err(|_| CoreError::Internal("password hashing job failed".into()))
    }

    pub async fn hash(&self, password: &str) -> Result<String, CoreError> {
        let password = password.to_owned();
        self.run(move |a| a.hash(&password)).await?
    }

    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verification, CoreError> {
        let password = password.to_owned();
        let (stored, real) = match stored {
            Some(s) => (Arc::<str>::from(s), true),
            None => (Arc::clone(&self.dummy_hash), false),
        };
        let v = self.run(move |a| a.verify(&password, &stored)).await?;
        Ok(if real { v } else { INVALID })
    }

    /// Spend the same time as a real verification, for unknown accounts.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), CoreError> {
        self.verify(password, None).await.map(|_| ())
    }
}

/// Hashing threads yield to request-serving threads: with nice 10 the scheduler gives the
/// runtime's threads about ten times their share, so session checks stay fast in a login storm.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread (who=0 with PRIO_PROCESS means this thread on Linux).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Argon2Settings {
        Argon2Settings { memory_kib: 1024, iterations: 1, parallelism: 1 }
    }

    #[test]
    fn argon2id_roundtrip_and_parameter_upgrade() {
        let a = HashAlgorithms::new(fast()).unwrap();
        let h = a.hash("hunter2").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert_eq!(a.verify("hunter2", &h), Verification { valid: true, needs_rehash: false });
        assert!(!a.verify("hunter3", &h).valid);
        let stronger = HashAlgorithms::new(Argon2Settings { memory_kib: 2048, ..fast() }).unwrap();
        assert_eq!(stronger.verify("hunter2", &h), Verification { valid: true, needs_rehash: true });
    }

    #[test]
    fn imported_hashes_verify_and_need_rehash() {
        let a = HashAlgorithms::new(fast()).unwrap();
        let bcrypt_hash = bcrypt::hash("secret", 4).unwrap();
        assert_eq!(a.verify("secret", &bcrypt_hash), Verification { valid: true, needs_rehash: true });
        assert!(!a.verify("wrong", &bcrypt_hash).valid);
        // Django's documented test vector format: pbkdf2_sha256$<iter>$<salt>$<b64>.
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"secret", b"saltsalt", 1000, &mut out);
        let django = format!("pbkdf2_sha256$1000$saltsalt${}", base64::engine::general_purpose::STANDARD.encode(out));
        assert!(a.verify("secret", &django).valid);
        assert!(!a.verify("nope", &django).valid);
        let sha512 = sha_crypt::sha512_simple("secret", &sha_crypt::Sha512Params::new(5000).unwrap()).unwrap();
        assert!(a.verify("secret", &sha512).valid);
        assert!(!a.verify("nope", &sha512).valid);
        let argon2i = argon2::Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(1024, 1, 1, None).unwrap())
            .hash_password(b"secret", &SaltString::generate(&mut rand::thread_rng()))
            .unwrap()
            .to_string();
        assert_eq!(a.verify("secret", &argon2i), Verification { valid: true, needs_rehash: true });
        assert_eq!(a.verify("secret", "garbage"), INVALID);
        assert_eq!(a.verify("secret", "pbkdf2_sha256$x$y$z"), INVALID);
    }

    #[tokio::test]
    async fn pool_hashes_off_runtime() {
        let h = PasswordHasher::new(fast(), 2).unwrap();
        let hash = h.hash("pw").await.unwrap();
        assert!(h.verify("pw", Some(&hash)).await.unwrap().valid);
        assert!(!h.verify("pw", None).await.unwrap().valid);
    }
}
