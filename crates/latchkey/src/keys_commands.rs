//! `latchkey keys list|rotate`: the token signing keys.

use anyhow::{anyhow, bail};
use clap::Subcommand;
use latchkey_core::events::ClientInfo;
use latchkey_core::signing::{alg_name, parse_alg, ALGORITHMS};

use crate::app::App;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the signing keys: the current one per algorithm and retired ones still published.
    List,
    /// Make a new signing key current. The old public key stays in JWKS until every token it
    /// signed has expired. Without --alg, every algorithm that has a key is rotated.
    Rotate {
        /// RS256, ES256 or EdDSA.
        #[arg(long)]
        alg: Option<String>,
        /// Keep the old public key published this many seconds (default: the longest token
        /// lifetime of any provider).
        #[arg(long)]
        keep_for: Option<i64>,
    },
}

fn when(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default()
}

pub async fn keys(app: &App, command: KeysCommand) -> anyhow::Result<()> {
    let signing = &app.core.signing;
    match command {
        KeysCommand::List => {
            println!("{:<6} {:<17} {:<8} PUBLISHED UNTIL", "ALG", "KID", "STATUS");
            for k in signing.list().await.map_err(|e| anyhow!("{e}"))? {
                let until = k.expires_at.map(when).unwrap_or_else(|| "-".into());
                println!("{:<6} {:<17} {:<8} {until}", k.alg, k.kid, k.status);
            }
        }
        KeysCommand::Rotate { alg, keep_for } => {
            let algs = match alg.as_deref() {
                Some(name) => vec![parse_alg(name).ok_or_else(|| anyhow!("'{name}' is not RS256, ES256 or EdDSA"))?],
                None => {
                    let present: Vec<_> = signing.list().await.map_err(|e| anyhow!("{e}"))?;
                    ALGORITHMS
                        .iter()
                        .copied()
                        .filter(|a| present.iter().any(|k| k.status == "current" && k.alg == alg_name(*a)))
                        .collect()
                }
            };
            if algs.is_empty() {
                bail!("there is no signing key yet; one is generated when the first token is signed");
            }
            let keep_for = match keep_for {
                Some(s) if s < 0 => bail!("--keep-for must not be negative"),
                Some(s) => s,
                None => signing.longest_token_lifetime().await.map_err(|e| anyhow!("{e}"))?,
            };
            for alg in algs {
                let r = signing.rotate(alg, keep_for).await.map_err(|e| anyhow!("{e}"))?;
                app.core
                    .events
                    .record("signing_key_rotated", None, &ClientInfo::cli(), serde_json::to_value(&r)?)
                    .await;
                match (&r.old_kid, r.old_kept_until) {
                    (Some(old), Some(until)) => println!(
                        "{}: new key {} is current; old key {old} stays published until {}",
                        r.alg,
                        r.new_kid,
                        when(until)
                    ),
                    _ => println!("{}: new key {} is current", r.alg, r.new_kid),
                }
            }
        }
    }
    Ok(())
}
