//! One LDAP connection: decode requests, answer them, and write all messages of one
//! operation in a single write (a search's entries and its result go out together).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use latchkey_core::events::ClientInfo;
use latchkey_core::model::UserKind;
use latchkey_core::policy::RequestFacts;
use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::*;
use ldap3_proto::LdapCodec;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

use crate::filter;
use crate::tree::{Attr, Entry, Snapshot};
use crate::{dn, schema, LdapService};

/// Largest request accepted; bigger ones end the connection.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// BER nesting allowed by the decoder: a filter 32 deep plus the message around it.
const MAX_BER_DEPTH: usize = 48;
/// A search's answer is written out once it grows past this, so huge results stream.
const FLUSH_AT: usize = 256 * 1024;
/// Open paged searches kept per connection.
const MAX_PAGED: usize = 16;

pub const OID_STARTTLS: &str = "1.3.6.1.4.1.1466.20037";
const OID_PAGED: &str = "1.2.840.113556.1.4.319";
const OID_NOTICE_OF_DISCONNECTION: &str = "1.3.6.1.4.1.1466.20036";

pub enum Exit {
    Closed,
    StartTls,
}

#[derive(Clone)]
struct Bound {
    user_id: Uuid,
    dn: String,
}

struct Paged {
    snap: Arc<Snapshot>,
    request: LdapSearchRequest,
    candidates: Option<Vec<usize>>,
    next: usize,
}

pub struct Conn {
    service: Arc<LdapService>,
    peer: SocketAddr,
    bound: Option<Bound>,
    paged: HashMap<Vec<u8>, Paged>,
    codec: LdapCodec,
    tls: bool,
}

fn result(code: LdapResultCode, message: &str) -> LdapResult {
    LdapResult { code, matcheddn: String::new(), message: message.to_string(), referral: Vec::new() }
}

fn msg(msgid: i32, op: LdapOp) -> LdapMsg {
    LdapMsg { msgid, op, ctrl: Vec::new() }
}

fn attr(name: &str, vals: &[&str]) -> LdapPartialAttribute {
    LdapPartialAttribute { atype: name.to_string(), vals: vals.iter().map(|v| v.as_bytes().to_vec()).collect() }
}

impl Conn {
    pub fn new(service: Arc<LdapService>, peer: SocketAddr) -> Conn {
        Conn {
            service,
            peer,
            bound: None,
            paged: HashMap::new(),
            codec: LdapCodec::new(Some(MAX_MESSAGE), Some(MAX_BER_DEPTH)),
            tls: false,
        }
    }

    /// Serves requests until the client leaves, asks for StartTLS (plain only) or misbehaves.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S, tls: bool) -> io::Result<Exit> {
        self.tls = tls;
        let mut input = BytesMut::with_capacity(4096);
        let mut out = BytesMut::with_capacity(4096);
        loop {
            // An oversized message is refused from its header, before it is buffered.
            if declared_length(&input).is_some_and(|n| n > MAX_MESSAGE) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "LDAP message too large"));
            }
            // Malformed BER is an error here: the connection ends.
            let request = match self.codec.decode(&mut input)? {
                Some(m) => m,
                None => {
                    let idle = self.service.settings().idle_timeout;
                    let read = io.read_buf(&mut input);
                    let n = if idle.is_zero() {
                        read.await?
                    } else {
                        match tokio::time::timeout(idle, read).await {
                            Ok(n) => n?,
                            Err(_) => {
                                tracing::debug!(peer = %self.peer, "closing an idle LDAP connection");
                                return Ok(Exit::Closed);
                            }
                        }
                    };
                    if n == 0 {
                        return Ok(Exit::Closed);
                    }
                    continue;
                }
            };
            let id = request.msgid;
            let starttls = match request.op {
                LdapOp::UnbindRequest => return Ok(Exit::Closed),
                LdapOp::AbandonRequest(_) => continue,
                LdapOp::BindRequest(req) => {
                    let res = self.bind(req).await;
                    self.encode(&mut out, msg(id, LdapOp::BindResponse(LdapBindResponse { res, saslcreds: None })))?;
                    false
                }
                LdapOp::SearchRequest(req) => {
                    self.search(io, &mut out, id, req, &request.ctrl).await?;
                    false
                }
                LdapOp::ExtendedRequest(req) if req.name == OID_PASSWORD_MODIFY => {
                    let resp = self.password_modify(&req).await;
                    self.encode(&mut out, msg(id, LdapOp::ExtendedResponse(resp)))?;
                    false
                }
                LdapOp::ExtendedRequest(req) => {
                    let (resp, upgrade) = self.extended(&req, !tls && input.is_empty());
                    self.encode(&mut out, msg(id, LdapOp::ExtendedResponse(resp)))?;
                    upgrade
                }
                LdapOp::CompareRequest(req) => {
                    let res = self.compare(&req).await;
                    self.encode(&mut out, msg(id, LdapOp::CompareResult(res)))?;
                    false
                }
                LdapOp::AddRequest(_) => self.refuse(&mut out, id, LdapOp::AddResponse)?,
                LdapOp::ModifyRequest(_) => self.refuse(&mut out, id, LdapOp::ModifyResponse)?,
                LdapOp::DelRequest(_) => self.refuse(&mut out, id, LdapOp::DelResponse)?,
                LdapOp::ModifyDNRequest(_) => self.refuse(&mut out, id, LdapOp::ModifyDNResponse)?,
                // Responses or anything else a client must not send.
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected LDAP operation")),
            };
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
            if starttls {
                return Ok(Exit::StartTls);
            }
        }
    }

    fn encode(&mut self, out: &mut BytesMut, m: LdapMsg) -> io::Result<()> {
        self.codec.encode(m, out)
    }

    fn refuse(&mut self, out: &mut BytesMut, id: i32, op: fn(LdapResult) -> LdapOp) -> io::Result<bool> {
        let res = result(LdapResultCode::UnwillingToPerform, "This directory is read-only over LDAP.");
        self.encode(out, msg(id, op(res)))?;
        Ok(false)
    }

    fn client(&self) -> ClientInfo {
        ClientInfo { ip: Some(self.peer.ip().to_string()), user_agent: Some("ldap".into()), actor: None }
    }

    // ---- bind ----

    async fn bind(&mut self, req: LdapBindRequest) -> LdapResult {
        self.bound = None;
        self.paged.clear();
        if req.version != 3 {
            return result(LdapResultCode::ProtocolError, "Only LDAP version 3 is supported.");
        }
        let password = match req.cred {
            LdapBindCred::Simple(p) => p,
            _ => return result(LdapResultCode::AuthMethodNotSupported, "Only simple binds are supported."),
        };
        if req.dn.is_empty() && password.is_empty() {
            // Anonymous: allowed to bind; what it may read is the provider's anonymous_search.
            return result(LdapResultCode::Success, "");
        }
        if password.is_empty() {
            return result(LdapResultCode::UnwillingToPerform, "Unauthenticated binds are not allowed.");
        }
        let invalid = || result(LdapResultCode::InvalidCredentials, "Invalid credentials.");
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "LDAP bind cannot {what}");
            result(LdapResultCode::Unavailable, "The directory is unavailable.")
        };
        let snap = match self.service.snapshot().await {
            Ok(s) => s,
            Err(e) => return unavailable("read the directory", &e),
        };
        let Some(provider) = snap.provider.clone() else {
            return invalid();
        };
        let Some(username) = bind_username(&snap, &req.dn) else {
            return invalid();
        };
        let canonical = format!("cn={},ou=users,{}", dn::escape(&username.to_lowercase()), provider.base_ndn);
        // Code-based MFA: a user with an authenticator binds with `password;code`. Such binds
        // are never cached: the code changes, and the password alone must not be enough.
        let core = Arc::clone(self.service.core());
        let mfa = match provider.mfa_support {
            true => match core.store.get_user_by_username(&username).await {
                Ok(Some(u)) => match core.mfa.configured_kinds(u.id).await {
                    Ok(kinds) => !kinds.is_empty(),
                    Err(e) => return unavailable("read authenticators", &e),
                },
                Ok(None) => false,
                Err(e) => return unavailable("read the user", &e),
            },
            false => false,
        };
        let (password, code) = match (mfa, password.rsplit_once(';')) {
            (true, Some((p, c))) => (p.to_string(), Some(c.trim().to_string())),
            (true, None) => (password, Some(String::new())),
            (false, _) => (password, None),
        };
        let key = self.service.cache_key(&canonical, &password);
        let cached = if mfa { None } else { self.service.cached_bind(&key) };
        if let Some(user_id) = cached {
            let dn = snap.by_user_id.get(&user_id).map(|&u| snap.users[u].dn.clone()).unwrap_or(canonical);
            self.bound = Some(Bound { user_id, dn });
            return result(LdapResultCode::Success, "");
        }
        let throttle = &core.flows.services().throttle;
        let ip = self.peer.ip().to_string();
        match throttle.check(&username, Some(&ip)).await {
            Ok(Some(wait)) => {
                let secs = latchkey_core::throttle::retry_after_secs(wait);
                return result(
                    LdapResultCode::InvalidCredentials,
                    &format!("Too many failed attempts. Try again in {secs} seconds."),
                );
            }
            Ok(None) => {}
            Err(e) => return unavailable("check the throttle", &e),
        }
        let user = match core.store.get_user_by_username(&username).await {
            Ok(u) => u,
            Err(e) => return unavailable("read the user", &e),
        };
        // A service account has no password: it binds with one of its API tokens. A token
        // bind is not cached (a lookup by hash is cheap, and a revoked token must stop at once).
        let mut by_token = false;
        if let Some(u) = user.as_ref().filter(|u| u.kind == UserKind::ServiceAccount) {
            match core.tokens.authenticate_api_token(&password).await {
                Ok(Some(owner)) if owner.id == u.id => by_token = true,
                Ok(_) => {}
                Err(e) => return unavailable("check the token", &e),
            }
        }
        let mut ok = by_token
            || match core.directory.check_password(user.as_ref(), &password).await {
                Ok(ok) => ok,
                Err(e) => return unavailable("check the password", &e),
            };
        if let (true, false, Some(code), Some(u)) = (ok, by_token, code.as_deref(), user.as_ref()) {
            ok = match core.mfa.verify_code(u, code).await {
                Ok(kind) => kind.is_some(),
                Err(e) => return unavailable("check the code", &e),
            };
        }
        let client = self.client();
        let user = match (ok, user) {
            (true, Some(user)) => user,
            (_, user) => {
                if let Err(e) = throttle.failure(&username, Some(&ip)).await {
                    tracing::warn!(error = %e, "cannot record a failed LDAP bind");
                }
                core.events
                    .record_raw(
                        "login_failed",
                        user.as_ref().map(|u| u.id),
                        Some(username.clone()),
                        &client,
                        serde_json::json!({ "via": "ldap" }),
                    )
                    .await;
                return invalid();
            }
        };
        if let Err(e) = throttle.success(&username).await {
            tracing::warn!(error = %e, "cannot reset the throttle");
        }
        // The right credentials; now the bind flow's and the application's policies decide.
        let facts = RequestFacts { client_ip: Some(ip.clone()), user_agent: Some("ldap".into()), ..Default::default() };
        let decision = match core.access.ldap_bind(&core.store, provider.id, provider.bind_flow_id, &user, facts).await
        {
            Ok(d) => d,
            Err(e) => return unavailable("evaluate the bind policies", &e),
        };
        if !decision.passing {
            core.events
                .record(
                    "login_failed",
                    Some(&user),
                    &client,
                    serde_json::json!({ "via": "ldap", "reason": "denied by policy", "messages": decision.messages }),
                )
                .await;
            let mut message = String::from("Access denied.");
            for m in &decision.messages {
                message.push(' ');
                message.push_str(m);
            }
            return result(LdapResultCode::InsufficentAccessRights, &message);
        }
        core.events
            .record("login", Some(&user), &client, serde_json::json!({ "via": "ldap", "mfa": mfa, "token": by_token }))
            .await;
        if !mfa && !by_token {
            self.service.remember_bind(key, user.id);
        }
        let dn = snap.by_user_id.get(&user.id).map(|&u| snap.users[u].dn.clone()).unwrap_or(canonical);
        self.bound = Some(Bound { user_id: user.id, dn });
        result(LdapResultCode::Success, "")
    }

    // ---- extended operations ----

    fn extended(&self, req: &LdapExtendedRequest, may_start_tls: bool) -> (LdapExtendedResponse, bool) {
        let ok = |name: Option<&str>, value: Option<Vec<u8>>| LdapExtendedResponse {
            res: result(LdapResultCode::Success, ""),
            name: name.map(String::from),
            value,
        };
        let err = |code, message: &str| LdapExtendedResponse { res: result(code, message), name: None, value: None };
        match req.name.as_str() {
            OID_WHOAMI => {
                let id = self.bound.as_ref().map(|b| format!("dn:{}", b.dn)).unwrap_or_default();
                (ok(None, Some(id.into_bytes())), false)
            }
            OID_STARTTLS if self.tls => (err(LdapResultCode::OperationsError, "TLS is already in use."), false),
            OID_STARTTLS if !may_start_tls => {
                (err(LdapResultCode::OperationsError, "StartTLS is not available on this connection."), false)
            }
            OID_STARTTLS => (ok(Some(OID_STARTTLS), None), true),
            _ => (err(LdapResultCode::ProtocolError, "Unsupported extended operation."), false),
        }
    }

    /// Password Modify (RFC 3062): a bound user changes its own password; the password
    /// policy applies and the user's other sessions and cached binds end.
    async fn password_modify(&mut self, req: &LdapExtendedRequest) -> LdapExtendedResponse {
        let fail = |code, message: &str| LdapExtendedResponse { res: result(code, message), name: None, value: None };
        let Some(bound) = self.bound.clone() else {
            return fail(LdapResultCode::InsufficentAccessRights, "Bind first.");
        };
        let Ok(change) = LdapPasswordModifyRequest::try_from(req) else {
            return fail(LdapResultCode::ProtocolError, "Malformed password modify request.");
        };
        if let Some(identity) = change.user_identity.as_deref().filter(|i| !i.is_empty()) {
            let same = dn::normalize(identity).zip(dn::normalize(&bound.dn)).is_some_and(|(a, b)| a == b);
            if !same {
                return fail(LdapResultCode::InsufficentAccessRights, "You can only change your own password.");
            }
        }
        let Some(new_password) = change.new_password.filter(|p| !p.is_empty()) else {
            return fail(
                LdapResultCode::UnwillingToPerform,
                "Give the new password; generated passwords are not offered.",
            );
        };
        let core = Arc::clone(self.service.core());
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "LDAP password modify failed");
            fail(LdapResultCode::Unavailable, "The directory is unavailable.")
        };
        let user = match core.directory.get_user(bound.user_id).await {
            Ok(u) => u,
            Err(e) => return unavailable(&e),
        };
        if let Some(old) = change.old_password.as_deref() {
            match core.directory.check_password(Some(&user), old).await {
                Ok(true) => {}
                Ok(false) => return fail(LdapResultCode::InvalidCredentials, "The old password is wrong."),
                Err(e) => return unavailable(&e),
            }
        }
        let request = match core.access.request(Some(&user), Default::default(), Default::default()).await {
            Ok(r) => r,
            Err(e) => return unavailable(&e),
        };
        let policies = vec![latchkey_core::flow::defaults::DEFAULT_PASSWORD_POLICY.to_string()];
        match core.access.password_problems(&core.store, &policies, request, &new_password).await {
            Ok(problems) if problems.is_empty() => {}
            Ok(problems) => return fail(LdapResultCode::ConstraintViolation, &problems.join(" ")),
            Err(e) => return unavailable(&e),
        }
        if let Err(e) = core.directory.set_password(&user, &new_password, &self.client()).await {
            return unavailable(&e);
        }
        LdapExtendedResponse { res: result(LdapResultCode::Success, ""), name: None, value: None }
    }

    // ---- compare ----

    async fn compare(&self, req: &LdapCompareRequest) -> LdapResult {
        let Ok(snap) = self.service.snapshot().await else {
            return result(LdapResultCode::Unavailable, "The directory is unavailable.");
        };
        let (me, everything) = match self.reader(&snap) {
            Ok(r) => r,
            Err(res) => return res,
        };
        let entry = dn::normalize(&req.dn)
            .and_then(|n| snap.by_ndn.get(&n))
            .map(|&i| &snap.entries[i])
            .filter(|e| snap.visible(me, everything, e));
        let Some(entry) = entry else {
            return result(LdapResultCode::NoSuchObject, "");
        };
        let value = String::from_utf8_lossy(&req.val).into_owned();
        if entry.get(&req.atype.to_ascii_lowercase()).is_none() {
            return result(LdapResultCode::NoSuchAttribute, "");
        }
        if filter::matches(&LdapFilter::Equality(req.atype.clone(), value), entry) {
            result(LdapResultCode::CompareTrue, "")
        } else {
            result(LdapResultCode::CompareFalse, "")
        }
    }

    // ---- search ----

    async fn search<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        out: &mut BytesMut,
        id: i32,
        req: LdapSearchRequest,
        controls: &[LdapControl],
    ) -> io::Result<()> {
        let done = |res: LdapResult| msg(id, LdapOp::SearchResultDone(res));
        let mut paging = None;
        for c in controls {
            match c {
                LdapControl::SimplePagedResults { size, cookie } => paging = Some((*size, cookie.clone())),
                LdapControl::Unknown { criticality: true, oid, .. } => {
                    let res =
                        result(LdapResultCode::UnavailableCriticalExtension, &format!("Unsupported control {oid}."));
                    return self.encode(out, done(res));
                }
                _ => {}
            }
        }
        if req.base.trim().is_empty() && req.scope == LdapSearchScope::Base {
            let entry = self.root_dse(&req).await;
            self.encode(out, msg(id, LdapOp::SearchResultEntry(entry)))?;
            return self.encode(out, done(result(LdapResultCode::Success, "")));
        }
        // The subschema is readable without binding, like the root DSE that points to it.
        if dn::normalize(&req.base).as_deref() == Some(schema::SUBSCHEMA_DN) {
            let entry = schema::entry();
            if req.scope != LdapSearchScope::Children && filter::matches(&req.filter, entry) {
                let entry = Selection::new(&req.attrs).entry(entry, req.typesonly);
                self.encode(out, msg(id, LdapOp::SearchResultEntry(entry)))?;
            }
            return self.encode(out, done(result(LdapResultCode::Success, "")));
        }
        if filter::depth(&req.filter) > filter::MAX_DEPTH {
            let res = result(LdapResultCode::UnwillingToPerform, "The filter is nested too deeply.");
            return self.encode(out, done(res));
        }

        // A continued paged search keeps the snapshot and position of its first page.
        let (snap, candidates, start) = match &paging {
            Some((size, cookie)) if !cookie.is_empty() => {
                let Some(state) = self.paged.remove(cookie) else {
                    let res = result(LdapResultCode::UnwillingToPerform, "Unknown or expired paged-results cookie.");
                    return self.encode(out, done(res));
                };
                if state.request != req {
                    let res = result(LdapResultCode::UnwillingToPerform, "The search changed between pages.");
                    return self.encode(out, done(res));
                }
                if *size <= 0 {
                    // RFC 2696: a zero size abandons the paged search.
                    let mut m = done(result(LdapResultCode::Success, ""));
                    m.ctrl.push(LdapControl::SimplePagedResults { size: 0, cookie: Vec::new() });
                    return self.encode(out, m);
                }
                (state.snap, state.candidates, state.next)
            }
            _ => {
                let snap = match self.service.snapshot().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "LDAP search cannot read the directory");
                        return self
                            .encode(out, done(result(LdapResultCode::Unavailable, "The directory is unavailable.")));
                    }
                };
                let candidates = filter::candidates(&req.filter, &snap);
                (snap, candidates, 0)
            }
        };
        let (me, everything) = match self.reader(&snap) {
            Ok(r) => r,
            Err(res) => return self.encode(out, done(res)),
        };
        let Some(base) = dn::normalize(&req.base) else {
            return self.encode(out, done(result(LdapResultCode::InvalidDNSyntax, "Invalid base DN.")));
        };
        let base_visible = snap.by_ndn.get(&base).is_some_and(|&i| snap.visible(me, everything, &snap.entries[i]));
        if !base_visible {
            let mut res = result(LdapResultCode::NoSuchObject, "");
            res.matcheddn = snap.provider.as_ref().map(|p| p.base_dn.clone()).unwrap_or_default();
            return self.encode(out, done(res));
        }
        let sub_suffix = format!(",{base}");
        let in_scope = |e: &Entry| match req.scope {
            LdapSearchScope::Base => e.ndn == base,
            LdapSearchScope::OneLevel => e.parent == base,
            LdapSearchScope::Subtree => e.ndn == base || e.ndn.ends_with(&sub_suffix),
            LdapSearchScope::Children => e.ndn.ends_with(&sub_suffix),
        };
        let selection = Selection::new(&req.attrs);
        let page_size = paging.as_ref().map(|(s, _)| usize::try_from(*s).unwrap_or(0)).filter(|s| *s > 0);
        let size_limit = usize::try_from(req.sizelimit).unwrap_or(0);
        let total = candidates.as_ref().map_or(snap.entries.len(), |c| c.len());
        let mut sent = 0usize;
        let mut pos = start;
        let mut code = LdapResultCode::Success;
        while pos < total {
            let index = candidates.as_ref().map_or(pos, |c| c[pos]);
            pos += 1;
            let Some(e) = snap.entries.get(index) else { continue };
            if !in_scope(e) || !snap.visible(me, everything, e) || !filter::matches(&req.filter, e) {
                continue;
            }
            if page_size.is_none() && size_limit > 0 && sent >= size_limit {
                code = LdapResultCode::SizeLimitExceeded;
                break;
            }
            self.encode(out, msg(id, LdapOp::SearchResultEntry(selection.entry(e, req.typesonly))))?;
            sent += 1;
            if out.len() >= FLUSH_AT {
                io.write_all(out).await?;
                out.clear();
            }
            if page_size.is_some_and(|p| sent >= p) {
                break;
            }
        }
        let mut m = done(result(code, ""));
        if paging.is_some() {
            let cookie = if page_size.is_some() && pos < total {
                let mut cookie = vec![0u8; 16];
                rand::thread_rng().fill_bytes(&mut cookie);
                if self.paged.len() >= MAX_PAGED {
                    // Forget the oldest-looking one rather than grow without bound.
                    if let Some(k) = self.paged.keys().next().cloned() {
                        self.paged.remove(&k);
                    }
                }
                self.paged
                    .insert(cookie.clone(), Paged { snap: Arc::clone(&snap), request: req, candidates, next: pos });
                cookie
            } else {
                Vec::new()
            };
            m.ctrl.push(LdapControl::SimplePagedResults { size: 0, cookie });
        }
        self.encode(out, m)
    }

    /// Who is reading: the bound user's index and whether it sees the whole tree. Unbound
    /// clients read only where the provider allows anonymous searches.
    fn reader(&self, snap: &Snapshot) -> Result<(Option<usize>, bool), LdapResult> {
        match &self.bound {
            Some(bound) => match snap.by_user_id.get(&bound.user_id) {
                Some(&me) => Ok((Some(me), snap.sees_everything(me))),
                None => Err(result(LdapResultCode::InsufficentAccessRights, "The bound account is no longer active.")),
            },
            None if snap.provider.as_ref().is_some_and(|p| p.anonymous_search) => Ok((None, true)),
            None => {
                Err(result(LdapResultCode::InsufficentAccessRights, "Anonymous searches are not allowed; bind first."))
            }
        }
    }

    async fn root_dse(&self, req: &LdapSearchRequest) -> LdapSearchResultEntry {
        let naming = match self.service.snapshot().await {
            Ok(s) => s.provider.as_ref().map(|p| p.base_dn.clone()),
            Err(_) => None,
        };
        let mut attrs = vec![
            attr("objectClass", &["top", "latchkeyRootDSE"]),
            attr("supportedLDAPVersion", &["3"]),
            attr("supportedControl", &[OID_PAGED]),
            attr("supportedExtension", &[OID_WHOAMI, OID_STARTTLS]),
            attr("supportedSASLMechanisms", &[]),
            attr("vendorName", &["Latchkey"]),
            attr("vendorVersion", &[concat!("Latchkey ", env!("CARGO_PKG_VERSION"))]),
            attr("subschemaSubentry", &[schema::SUBSCHEMA_DN]),
        ];
        if let Some(n) = naming {
            attrs.push(attr("namingContexts", &[n.as_str()]));
        }
        attrs.retain(|a| !a.vals.is_empty());
        // The root DSE's attributes are operational, but clients ask for them in every way:
        // give all of them unless specific ones are named.
        let named: Vec<String> =
            req.attrs.iter().map(|a| a.to_ascii_lowercase()).filter(|a| a != "*" && a != "+").collect();
        if !named.is_empty() && named != ["1.1"] {
            attrs.retain(|a| named.contains(&a.atype.to_ascii_lowercase()));
        } else if named == ["1.1"] {
            attrs.clear();
        }
        LdapSearchResultEntry { dn: String::new(), attributes: attrs }
    }
}

/// Which attributes a search asked for.
struct Selection {
    all_user: bool,
    all_operational: bool,
    named: Vec<String>,
}

impl Selection {
    fn new(attrs: &[String]) -> Selection {
        let lower: Vec<String> = attrs.iter().map(|a| a.split(';').next().unwrap_or(a).to_ascii_lowercase()).collect();
        let only_none = lower.iter().all(|a| a == "1.1") && !lower.is_empty();
        Selection {
            all_user: lower.is_empty() || lower.iter().any(|a| a == "*"),
            all_operational: lower.iter().any(|a| a == "+"),
            named: if only_none { Vec::new() } else { lower },
        }
    }

    fn wants(&self, a: &Attr, operational: bool) -> bool {
        (if operational { self.all_operational } else { self.all_user }) || self.named.iter().any(|n| n == a.lname)
    }

    fn entry(&self, e: &Entry, types_only: bool) -> LdapSearchResultEntry {
        let attributes = e
            .attrs
            .iter()
            .map(|a| (a, false))
            .chain(e.op_attrs.iter().map(|a| (a, true)))
            .filter(|(a, op)| !a.vals.is_empty() && self.wants(a, *op))
            .map(|(a, _)| LdapPartialAttribute {
                atype: a.name.to_string(),
                vals: if types_only { Vec::new() } else { a.vals.iter().map(|v| v.as_bytes().to_vec()).collect() },
            })
            .collect();
        LdapSearchResultEntry { dn: e.dn.clone(), attributes }
    }
}

/// Answers a connection over the limit with a notice of disconnection (RFC 4511 4.4.1,
/// `busy`) and closes it.
pub async fn refuse_busy(mut stream: tokio::net::TcpStream) {
    let notice = msg(
        0,
        LdapOp::ExtendedResponse(LdapExtendedResponse {
            res: result(LdapResultCode::Busy, "Too many connections; try again later."),
            name: Some(OID_NOTICE_OF_DISCONNECTION.to_string()),
            value: None,
        }),
    );
    let mut out = BytesMut::new();
    if LdapCodec::new(None, None).encode(notice, &mut out).is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&out)).await;
    }
    let _ = stream.shutdown().await;
}

/// The content length an LDAPMessage header announces, once the header is complete.
/// Lengths that do not fit the header form (more than 4 length bytes) count as huge.
fn declared_length(buf: &[u8]) -> Option<usize> {
    let first = *buf.get(1)?;
    if first < 0x80 {
        return Some(usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n > 4 {
        return Some(usize::MAX);
    }
    let bytes = buf.get(2..2 + n)?;
    Some(bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
}

/// The username a bind DN names: `cn=<u>,ou=users,<base>` or (lldap style)
/// `uid=<u>,ou=people,<base>`; either attribute works under either unit.
fn bind_username(snap: &Snapshot, bind_dn: &str) -> Option<String> {
    let provider = snap.provider.as_ref()?;
    let rdns = dn::parse(bind_dn)?;
    let (first, rest) = rdns.split_first()?;
    let (unit, base) = rest.split_first()?;
    if !matches!(first.0.as_str(), "cn" | "uid") || unit.0 != "ou" {
        return None;
    }
    if !matches!(unit.1.to_lowercase().as_str(), "users" | "people") {
        return None;
    }
    (dn::join_normalized(base) == provider.base_ndn).then(|| first.1.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths() {
        assert_eq!(declared_length(&[0x30]), None);
        assert_eq!(declared_length(&[0x30, 0x05]), Some(5));
        assert_eq!(declared_length(&[0x30, 0x82, 0x01]), None);
        assert_eq!(declared_length(&[0x30, 0x82, 0x01, 0x00]), Some(256));
        assert_eq!(declared_length(&[0x30, 0x84, 0x00, 0x20, 0x00, 0x00]), Some(0x0020_0000));
        assert_eq!(declared_length(&[0x30, 0x89]), Some(usize::MAX));
    }
}
