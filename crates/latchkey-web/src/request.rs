//! Facts about the caller: address (through trusted proxies), scheme, origin, cookies and
//! the logged-in session. Handlers take [`Caller`] as an extractor.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use latchkey_core::events::ClientInfo;
use latchkey_core::flow::RequestInfo;
use latchkey_core::keys::{hash_secret, random_secret};
use latchkey_core::sessions::ActiveSession;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::error::WebError;
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "latchkey_session";
/// Identifies a browser's running flows and anchors CSRF tokens.
pub const FLOW_COOKIE: &str = "latchkey_flow";
pub use latchkey_core::mfa::remember::REMEMBER_COOKIE;

/// The connection's scheme, set by the listener (`"https"` on the TLS port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme(pub &'static str);

/// Everything handlers need to know about who is asking.
#[derive(Clone)]
pub struct Caller {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub https: bool,
    /// `scheme://host[:port]` users reach us under.
    pub origin: String,
    pub jar: CookieJar,
    pub session: Option<Arc<ActiveSession>>,
    pub host: Option<String>,
    pub path: String,
    pub method: String,
    /// Domain for the session cookie: set when this host lies under a domain-mode proxy
    /// provider's `cookie_domain`, so the protected hosts receive the session too.
    pub cookie_domain: Option<String>,
}

impl Caller {
    pub fn client(&self) -> ClientInfo {
        ClientInfo { ip: self.ip.map(|ip| ip.to_string()), user_agent: self.user_agent.clone(), actor: None }
    }

    pub fn session_cookie(&self) -> Option<String> {
        self.jar.get(SESSION_COOKIE).map(|c| c.value().to_string())
    }

    pub fn request_info(&self) -> RequestInfo {
        RequestInfo {
            client: self.client(),
            session: self.session.clone(),
            session_cookie: self.session_cookie(),
            origin: self.origin.clone(),
            host: self.host.clone(),
            path: Some(self.path.clone()),
            method: Some(self.method.clone()),
            remember_device: self.jar.get(REMEMBER_COOKIE).map(|c| c.value().to_string()),
        }
    }

    /// A cookie with our defaults: HttpOnly, SameSite=Lax, Secure on HTTPS, path `/`.
    pub fn cookie(&self, name: &'static str, value: String) -> Cookie<'static> {
        let mut c = Cookie::new(name, value);
        c.set_http_only(true);
        c.set_same_site(SameSite::Lax);
        c.set_secure(self.https);
        c.set_path("/");
        if name == SESSION_COOKIE {
            if let Some(d) = &self.cookie_domain {
                c.set_domain(d.clone());
            }
        }
        c
    }

    pub fn removal(&self, name: &'static str) -> Cookie<'static> {
        let mut c = self.cookie(name, String::new());
        c.make_removal();
        c
    }

    /// The browser's flow cookie, creating one if it has none. Returns (value, jar to send).
    pub fn flow_cookie(&self) -> (String, CookieJar) {
        match self.jar.get(FLOW_COOKIE) {
            Some(c) if c.value().len() >= 32 => (c.value().to_string(), self.jar.clone()),
            _ => {
                let value = random_secret(32);
                (value.clone(), self.jar.clone().add(self.cookie(FLOW_COOKIE, value)))
            }
        }
    }

    /// The key under which this browser's flow state is stored (the cookie itself is never stored).
    pub fn flow_key(flow_cookie: &str) -> String {
        hash_secret(flow_cookie)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty())
}

/// The client address: the peer, or — when the peer is a trusted proxy — the right-most
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(xff) = header_str(headers, "x-forwarded-for") else { return Some(peer) };
    let mut last = peer;
    for part in xff.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) => {
                last = ip;
                if !is_trusted(&ip) {
                    return Some(ip);
                }
            }
            Err(_) => return Some(last),
        }
    }
    Some(last)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let trusted_peer = peer.is_some_and(|p| state.config.trusted_proxies.iter().any(|n| n.contains(&p)));
        let ip = client_ip(peer, &parts.headers, &state.config.trusted_proxies);
        let listener_https = parts.extensions.get::<Scheme>().is_some_and(|s| s.0 == "https");
        let forwarded_proto = if trusted_peer { header_str(&parts.headers, "x-forwarded-proto") } else { None };
        let https = match forwarded_proto {
            Some(p) => p.eq_ignore_ascii_case("https"),
            None => listener_https,
        };
        let host = trusted_peer
            .then(|| header_str(&parts.headers, "x-forwarded-host"))
            .flatten()
            .or_else(|| header_str(&parts.headers, header::HOST.as_str()))
            .map(String::from);
        let origin = match &state.config.external_url {
            Some(url) => url.origin().ascii_serialization(),
            None => {
                let host = trusted_peer
                    .then(|| header_str(&parts.headers, "x-forwarded-host"))
                    .flatten()
                    .or_else(|| header_str(&parts.headers, header::HOST.as_str()))
                    .or_else(|| parts.uri.host())
                    .unwrap_or("localhost");
                format!("{}://{}", if https { "https" } else { "http" }, host)
            }
        };
        let jar = CookieJar::from_headers(&parts.headers);
        let session = match jar.get(SESSION_COOKIE) {
            Some(c) => state.core.sessions.validate(c.value()).await?,
            None => None,
        };
        let cookie_domain = match &host {
            Some(h) => state.core.proxy.cookie_domain_for(h).await,
            None => None,
        };
        Ok(Caller {
            cookie_domain,
            ip,
            user_agent: header_str(&parts.headers, header::USER_AGENT.as_str()).map(|s| s.chars().take(512).collect()),
            https: https || state.config.external_url.as_ref().is_some_and(|u| u.scheme() == "https"),
            origin,
            jar,
            session,
            host,
            path: parts.uri.path().to_string(),
            method: parts.method.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_believed_from_trusted_peers() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(client_ip(Some(lo), &h, &trusted), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip(Some(stranger), &h, &trusted), Some(stranger));
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(Some(lo), &h, &trusted), Some(lo));
    }
}
