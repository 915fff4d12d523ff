//! Password policies: length, character classes, zxcvbn strength and the HIBP k-anonymity check.

use sha1::{Digest, Sha1};

use super::config::Fields;
use super::PolicyEnv;
use crate::error::{CoreError, Result};

/// zxcvbn's cost grows quickly with length; beyond this the extra characters change nothing.
const ZXCVBN_MAX_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct PasswordRules {
    pub length_min: usize,
    pub amount_uppercase: usize,
    pub amount_lowercase: usize,
    pub amount_digits: usize,
    pub amount_symbols: usize,
    /// Minimum zxcvbn score (0–4).
    pub zxcvbn_score_threshold: Option<u8>,
    pub check_hibp: bool,
    /// A password seen in more breaches than this fails.
    pub hibp_allowed_count: u64,
    /// Shown instead of the per-rule messages when set.
    pub error_message: Option<String>,
}

impl PasswordRules {
    pub(super) fn parse(f: &Fields<'_>) -> Result<Self> {
        f.only(&[
            "length_min",
            "amount_uppercase",
            "amount_lowercase",
            "amount_digits",
            "amount_symbols",
            "zxcvbn_score_threshold",
            "check_hibp",
            "hibp_allowed_count",
            "error_message",
        ])?;
        let threshold = f.opt_u64("zxcvbn_score_threshold")?;
        let zxcvbn_score_threshold = match threshold {
            None => None,
            Some(t @ 0..=4) => Some(t as u8),
            Some(_) => {
                return Err(CoreError::invalid_field(
                    "zxcvbn_score_threshold",
                    "zxcvbn_score_threshold must be between 0 and 4.",
                ))
            }
        };
        Ok(PasswordRules {
            length_min: f.usize_or("length_min", 8)?,
            amount_uppercase: f.usize_or("amount_uppercase", 0)?,
            amount_lowercase: f.usize_or("amount_lowercase", 0)?,
            amount_digits: f.usize_or("amount_digits", 0)?,
            amount_symbols: f.usize_or("amount_symbols", 0)?,
            zxcvbn_score_threshold,
            check_hibp: f.bool_or("check_hibp", false)?,
            hibp_allowed_count: f.opt_u64("hibp_allowed_count")?.unwrap_or(0),
            error_message: f.opt_str("error_message")?.filter(|m| !m.trim().is_empty()),
        })
    }

    /// The messages of the rules `password` breaks (empty: it passes). `user_inputs` (username,
    /// name, email) make zxcvbn penalise passwords built from them.
    pub(super) async fn check(&self, password: &str, user_inputs: &[&str], env: &dyn PolicyEnv) -> Result<Vec<String>> {
        let mut messages = Vec::new();
        let (mut upper, mut lower, mut digits, mut symbols, mut len) = (0, 0, 0, 0, 0);
        for c in password.chars() {
            len += 1;
            if c.is_uppercase() {
                upper += 1;
            } else if c.is_lowercase() {
                lower += 1;
            } else if c.is_numeric() {
                digits += 1;
            } else if !c.is_whitespace() {
                symbols += 1;
            }
        }
        if len < self.length_min {
            messages.push(format!("Use at least {} characters.", self.length_min));
        }
        let classes = [
            (upper, self.amount_uppercase, "an uppercase letter", "uppercase letters"),
            (lower, self.amount_lowercase, "a lowercase letter", "lowercase letters"),
            (digits, self.amount_digits, "a digit", "digits"),
            (symbols, self.amount_symbols, "a symbol", "symbols"),
        ];
        for (have, want, one, many) in classes {
            if have < want {
                messages.push(if want == 1 { format!("Add {one}.") } else { format!("Use at least {want} {many}.") });
            }
        }
        if let Some(threshold) = self.zxcvbn_score_threshold {
            let end = password.char_indices().nth(ZXCVBN_MAX_CHARS).map_or(password.len(), |(i, _)| i);
            let score = u8::from(zxcvbn::zxcvbn(&password[..end], user_inputs).score());
            if score < threshold {
                messages.push("This password is too easy to guess.".to_string());
            }
        }
        // The network lookup only when everything local passed: no point asking otherwise.
        if self.check_hibp && messages.is_empty() && breach_count(password, env).await? > self.hibp_allowed_count {
            messages.push("This password has appeared in a data breach.".to_string());
        }
        if !messages.is_empty() {
            if let Some(custom) = &self.error_message {
                return Ok(vec![custom.clone()]);
            }
        }
        Ok(messages)
    }
}

/// How often the password appears in the breach corpus. Only the first five hex characters of
/// its SHA-1 leave this process (k-anonymity); the suffixes of the range are compared here.
pub async fn breach_count(password: &str, env: &dyn PolicyEnv) -> Result<u64> {
    let digest = hex::encode_upper(Sha1::digest(password.as_bytes()));
    let (prefix, suffix) = digest.split_at(5);
    let body = env.hibp_range(prefix).await?;
    Ok(parse_range(&body, suffix))
}

/// Finds `suffix` in a `SUFFIX:COUNT` per line range answer; malformed lines are ignored.
fn parse_range(body: &str, suffix: &str) -> u64 {
    body.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .find(|(s, _)| s.eq_ignore_ascii_case(suffix))
        .and_then(|(_, count)| count.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_range_lines() {
        let body = "0018A45C4D1DEF81644B54AB7F969B88D65:1\r\nABCDEF0123456789ABCDEF0123456789ABC:42\r\n";
        assert_eq!(super::parse_range(body, "ABCDEF0123456789ABCDEF0123456789ABC"), 42);
        assert_eq!(super::parse_range(body, "FFFFF0123456789ABCDEF0123456789ABC0"), 0);
        assert_eq!(super::parse_range("garbage\nX:notanumber", "X"), 0);
    }
}
