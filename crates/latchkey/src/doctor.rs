//! `latchkey doctor forward-auth URL`: looks at a protected URL from the outside, as an
//! anonymous browser, and explains what the reverse proxy in front of it does — the usual
//! wiring mistakes each have a recognisable answer.

use anyhow::{anyhow, bail};
use latchkey_core::proxy::ProxyMode;
use reqwest::header::{ACCEPT, LOCATION};
use std::time::Duration;
use url::Url;

use crate::app::App;

/// What one anonymous request showed, and what it means.
#[derive(Debug, PartialEq)]
pub enum Finding {
    Ok(String),
    Problem(String),
}

/// Interprets the proxy's answer to an anonymous browser request for `target`.
pub fn diagnose(
    target: &Url,
    status: u16,
    location: Option<&str>,
    provider_home: Option<&Url>,
    cookie_domain: Option<&str>,
) -> Finding {
    match status {
        200..=299 => Finding::Problem(format!(
            "{target} answered {status} to an anonymous browser: the proxy does not ask Latchkey. \
             Check the forward_auth (Caddy), auth_request (nginx) or forwardAuth (Traefik) configuration, \
             or whether this path matches the provider's unauthenticated paths."
        )),
        301..=303 | 307 | 308 => {
            let Some(location) = location else {
                return Finding::Problem(format!("{target} redirected ({status}) without a Location header."));
            };
            let Ok(to) = target.join(location) else {
                return Finding::Problem(format!("{target} redirected to an unparsable Location: {location}"));
            };
            let to_login = to.path().starts_with("/outpost.goauthentik.io/start")
                || to.path().starts_with("/if/flow/")
                || to.path().starts_with("/outpost.goauthentik.io/");
            if !to_login {
                return Finding::Problem(format!(
                    "{target} redirected to {to}, which is not Latchkey's login: another auth layer or a redirect rule \
                     answers first."
                ));
            }
            if let (Some(domain), Some(host)) = (cookie_domain, to.host_str()) {
                let inside = host == domain || host.ends_with(&format!(".{domain}"));
                if !inside {
                    return Finding::Problem(format!(
                        "the login is at {host}, outside the cookie domain {domain}: the session cookie set there \
                         never reaches {target}. Make external_host a host under {domain}, or fix cookie_domain."
                    ));
                }
            }
            if let Some(home) = provider_home {
                if to.host_str() != home.host_str() && to.path().starts_with("/outpost.goauthentik.io/start") {
                    return Finding::Ok(format!(
                        "anonymous visitors are sent to log in ({to}); the provider's external_host is {home}."
                    ));
                }
            }
            Finding::Ok(format!("anonymous visitors are sent to log in at {to}."))
        }
        401 => Finding::Problem(format!(
            "{target} answered 401: nginx passes the outpost's 401 to the browser. Add \
             `error_page 401 = @goauthentik_proxy_signin;` and the location that redirects to \
             /outpost.goauthentik.io/start?rd=$scheme://$http_host$request_uri."
        )),
        403 => Finding::Problem(format!(
            "{target} answered 403 to an anonymous browser: a policy denies it before login, or the proxy itself refuses."
        )),
        500..=599 => Finding::Problem(format!(
            "{target} answered {status}: the proxy probably cannot reach Latchkey's /outpost.goauthentik.io/ endpoints. \
             Check the upstream address in the forward-auth configuration."
        )),
        other => Finding::Problem(format!("{target} answered {other}, which a forward-auth setup never should.")),
    }
}

pub async fn forward_auth(app: &App, url: &str) -> anyhow::Result<()> {
    let target = Url::parse(url).map_err(|e| anyhow!("'{url}' is not a URL ({e})"))?;
    if !matches!(target.scheme(), "http" | "https") {
        bail!("'{url}' is not an http(s) URL");
    }
    let provider = app.core.proxy.resolve(&target).await.map_err(|e| anyhow!("{e}"))?;
    match &provider {
        Some(p) => println!(
            "provider: {} ({} mode, external_host {}{}) for application {}",
            p.name,
            if p.mode == ProxyMode::Domain { "domain" } else { "single" },
            p.external_host,
            p.cookie_domain.as_deref().map(|d| format!(", cookie_domain {d}")).unwrap_or_default(),
            p.app.slug
        ),
        None => println!(
            "provider: none covers {} — no proxy provider has it as external_host (single mode) or under its \
             cookie_domain (domain mode); the outpost will refuse it",
            target.host_str().unwrap_or("")
        ),
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        // Self-signed certificates are common in a home network; this is a diagnosis, not a login.
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| anyhow!("cannot build an HTTP client: {e}"))?;
    let response = client
        .get(target.clone())
        .header(ACCEPT, "text/html,application/xhtml+xml")
        .send()
        .await
        .map_err(|e| anyhow!("cannot fetch {target}: {e}"))?;
    let status = response.status().as_u16();
    let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(String::from);
    println!("anonymous GET {target}: {status}{}", location.as_deref().map(|l| format!(" -> {l}")).unwrap_or_default());
    let finding = diagnose(
        &target,
        status,
        location.as_deref(),
        provider.as_ref().map(|p| &p.external_host),
        provider.as_ref().and_then(|p| p.cookie_domain.as_deref()),
    );
    match finding {
        Finding::Ok(what) if provider.is_some() => {
            println!("ok: {what}");
            Ok(())
        }
        Finding::Ok(what) => bail!("{what} But no provider covers this host, so the login cannot return here"),
        Finding::Problem(what) => bail!("{what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn explains_the_usual_mistakes() {
        let app = u("https://app.example.test/x");
        assert!(
            matches!(diagnose(&app, 200, None, None, None), Finding::Problem(m) if m.contains("does not ask Latchkey"))
        );
        assert!(matches!(diagnose(&app, 401, None, None, None), Finding::Problem(m) if m.contains("error_page 401")));
        assert!(matches!(diagnose(&app, 502, None, None, None), Finding::Problem(m) if m.contains("upstream")));
        let outside = diagnose(
            &app,
            302,
            Some("https://auth.other.test/outpost.goauthentik.io/start?rd=x"),
            None,
            Some("example.test"),
        );
        assert!(matches!(outside, Finding::Problem(m) if m.contains("outside the cookie domain")));
        let fine = diagnose(
            &app,
            302,
            Some("https://auth.example.test/outpost.goauthentik.io/start?rd=x"),
            None,
            Some("example.test"),
        );
        assert!(matches!(fine, Finding::Ok(_)));
        let elsewhere = diagnose(&app, 302, Some("https://sso.example.test/login"), None, None);
        assert!(matches!(elsewhere, Finding::Problem(m) if m.contains("not Latchkey's login")));
    }
}
