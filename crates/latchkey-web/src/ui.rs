//! What the admin interface and the user portal share: the session gate (login redirect,
//! 403 for non-superusers), CSRF-checked forms, page rendering with the layout's context
//! (branding, avatar, navigation), list paging and form errors shown next to their fields.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::CookieJar;
use latchkey_core::console;
use latchkey_core::error::FieldErrors;
use latchkey_core::model::ListQuery;
use latchkey_core::sessions::ActiveSession;
use latchkey_core::system_settings::SystemSettings;
use latchkey_core::CoreError;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::WebError;
use crate::flows::found;
use crate::request::Caller;
use crate::state::AppState;

/// A page that could not be served as asked: a redirect, an error page, a refused form.
pub struct UiError(pub Box<Response>);

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<WebError> for UiError {
    fn from(e: WebError) -> Self {
        UiError(Box::new(e.into_response()))
    }
}

impl From<CoreError> for UiError {
    fn from(e: CoreError) -> Self {
        UiError(Box::new(WebError::from(e).into_response()))
    }
}

pub type UiResult = Result<Response, UiError>;

/// A submitted form (`application/x-www-form-urlencoded`); repeated names keep every value.
#[derive(Debug, Default, Clone)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Result<Form, WebError> {
        std::str::from_utf8(body).map_err(|_| WebError::bad_request("The form is not valid UTF-8."))?;
        Ok(Form(url::form_urlencoded::parse(body).into_owned().collect()))
    }
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }
    pub fn opt(&self, name: &str) -> Option<String> {
        Some(self.get(name).trim().to_string()).filter(|s| !s.is_empty())
    }
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
    }
    pub fn checked(&self, name: &str) -> bool {
        matches!(self.get(name), "on" | "true" | "1" | "yes")
    }
    /// What was typed, for showing the form again (secrets left out).
    pub fn values(&self) -> BTreeMap<String, String> {
        self.0.iter().filter(|(k, _)| !k.contains("password") && k != "csrf_token").cloned().collect()
    }
}

/// A logged-in request to the interfaces.
pub struct Ui {
    pub state: AppState,
    pub caller: Caller,
    pub me: Arc<ActiveSession>,
    pub settings: SystemSettings,
    flow_cookie: String,
    jar: CookieJar,
    /// The `?notice=` a successful POST redirected with.
    notice: Option<String>,
}

pub fn login_redirect(settings: &SystemSettings, here: &str) -> Response {
    let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
    found(&format!("/if/flow/{}/?next={next}", settings.default_authentication_flow))
}

impl Ui {
    /// Any logged-in user; without a session, a redirect to the login flow that comes back here.
    pub async fn user(state: &AppState, caller: Caller, here: &str) -> Result<Ui, UiError> {
        let settings = state.core.catalog.snapshot().await?.settings.clone();
        let Some(me) = caller.session.clone() else {
            return Err(UiError(Box::new(login_redirect(&settings, here))));
        };
        let (flow_cookie, jar) = caller.flow_cookie();
        let notice = here
            .split_once('?')
            .and_then(|(_, q)| query_map(Some(q)).remove("notice"))
            .map(|n| n.chars().take(200).collect());
        Ok(Ui { state: state.clone(), caller, me, settings, flow_cookie, jar, notice })
    }

    /// Superusers only; anyone else logged in gets a 403 page.
    pub async fn admin(state: &AppState, caller: Caller, here: &str) -> Result<Ui, UiError> {
        let ui = Self::user(state, caller, here).await?;
        if !ui.me.user.is_superuser {
            return Err(WebError::forbidden("The admin interface is for administrators only.").into());
        }
        Ok(ui)
    }

    pub fn core(&self) -> &latchkey_core::Core {
        &self.state.core
    }

    pub fn client(&self) -> latchkey_core::events::ClientInfo {
        self.caller.client()
    }

    /// Refuses a form whose CSRF token is not bound to this browser's flow cookie.
    pub fn check_csrf(&self, form: &Form) -> Result<(), UiError> {
        let token = form.get("csrf_token");
        let bound = self.caller.jar.get(crate::request::FLOW_COOKIE).map(|c| c.value().to_string());
        if bound.is_some_and(|c| self.state.core.keys.csrf.verify(c.as_bytes(), token)) {
            Ok(())
        } else {
            Err(WebError::forbidden(
                "The form expired or did not come from this site (CSRF check failed). Reload the page and try again.",
            )
            .into())
        }
    }

    /// Parses a POSTed form and checks its CSRF token.
    pub fn form(&self, body: &[u8]) -> Result<Form, UiError> {
        let form = Form::parse(body)?;
        self.check_csrf(&form)?;
        Ok(form)
    }

    fn avatar_mode(&self) -> &str {
        self.settings.avatar_mode(&self.state.config.avatars)
    }

    pub fn avatar(&self, name: &str, email: Option<&str>) -> console::Avatar {
        console::avatar(self.avatar_mode(), name, email)
    }

    /// Renders `template` inside the layout, with `status`.
    pub fn page_with(&self, status: StatusCode, template: &str, section: &str, ctx: minijinja::Value) -> UiResult {
        let user = &self.me.user;
        let layout = minijinja::context! {
            csrf_token => self.state.core.keys.csrf.sign(self.flow_cookie.as_bytes()),
            section => section,
            branding => minijinja::context! {
                title => self.settings.branding_title, logo => self.settings.branding_logo,
                favicon => self.settings.branding_favicon,
            },
            logout_url => format!("/if/flow/{}/", self.settings.default_invalidation_flow),
            me => minijinja::context! {
                username => user.username, name => user.name, email => user.email,
                is_superuser => user.is_superuser,
                avatar => self.avatar(&user.name, user.email.as_deref()),
            },
            app_version => env!("CARGO_PKG_VERSION"),
            admin => template.starts_with("admin/"),
            notice => self.notice,
        };
        let page = self.state.render(template, minijinja::context! { ..ctx, ..layout })?;
        let mut response =
            (status, self.jar.clone(), [(header::CACHE_CONTROL, "no-store")], Html(page)).into_response();
        // Application icons, logos and Gravatar pictures may live on other sites; images are
        // the one thing these pages load from elsewhere (Gravatar only when chosen).
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data: https:; style-src 'self'; \
                 script-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'",
            ),
        );
        Ok(response)
    }

    pub fn page(&self, template: &str, section: &str, ctx: minijinja::Value) -> UiResult {
        self.page_with(StatusCode::OK, template, section, ctx)
    }

    /// Shows a form again after a refused save: field errors next to their fields (400), or
    /// the conflict (409: a duplicate name, a stale edit, the last superuser) above the form,
    /// with what was typed kept. Other errors become their error page.
    pub fn refused(
        &self,
        template: &str,
        section: &str,
        ctx: minijinja::Value,
        form: &Form,
        err: CoreError,
    ) -> UiResult {
        let (status, message, fields) = match err {
            CoreError::Invalid { message, fields } => (StatusCode::BAD_REQUEST, message, fields),
            CoreError::Conflict(message) | CoreError::Store(latchkey_core::StoreError::Conflict(message)) => {
                (StatusCode::CONFLICT, message, FieldErrors::new())
            }
            other => return Err(other.into()),
        };
        let ctx = minijinja::context! { errors => fields, error => message, values => form.values(), ..ctx };
        self.page_with(status, template, section, ctx)
    }
}

/// 303 to `to` after a successful POST, with a short notice for the next page.
pub fn done(to: &str, notice: &str) -> UiResult {
    let sep = if to.contains('?') { '&' } else { '?' };
    let notice: String = url::form_urlencoded::byte_serialize(notice.as_bytes()).collect();
    Ok(axum::response::Redirect::to(&format!("{to}{sep}notice={notice}")).into_response())
}

/// `?search=&page=&page_size=&ordering=` as the lists take them.
pub fn list_query(params: &BTreeMap<String, String>, orderings: &[&str], default_size: u32) -> ListQuery {
    let ordering = params.get("ordering").filter(|o| orderings.contains(&o.trim_start_matches('-'))).cloned();
    ListQuery {
        search: params.get("search").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
        ordering,
        page: params.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1),
        page_size: params.get("page_size").and_then(|p| p.parse().ok()).unwrap_or(default_size).clamp(1, 200),
    }
}

/// Paging facts for the list templates.
pub fn pager(query: &ListQuery, total: u64) -> minijinja::Value {
    let pages = total.div_ceil(u64::from(query.page_size)).max(1);
    let keep = |page: u64| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(s) = &query.search {
            q.append_pair("search", s);
        }
        if let Some(o) = &query.ordering {
            q.append_pair("ordering", o);
        }
        q.append_pair("page", &page.to_string());
        q.append_pair("page_size", &query.page_size.to_string());
        format!("?{}", q.finish())
    };
    let page = u64::from(query.page).min(pages);
    minijinja::context! {
        page => page, pages => pages, total => total, search => query.search,
        prev => (page > 1).then(|| keep(page - 1)),
        next => (page < pages).then(|| keep(page + 1)),
    }
}

pub fn query_map(raw: Option<&str>) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect()
}

pub fn fmt_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub fn parse_id(id: &str, what: &str) -> Result<uuid::Uuid, UiError> {
    uuid::Uuid::parse_str(id).map_err(|_| WebError::not_found(format!("{what} '{id}' not found")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_keep_repeated_names_and_hide_secrets_when_shown_again() {
        let form = Form::parse(b"username=al%20ice&groups=a&groups=b&password=x&csrf_token=t&on=on").unwrap();
        assert_eq!(form.get("username"), "al ice");
        assert_eq!(form.all("groups"), vec!["a", "b"]);
        assert!(form.checked("on") && !form.checked("missing"));
        let shown = form.values();
        assert!(shown.contains_key("username") && !shown.contains_key("password") && !shown.contains_key("csrf_token"));
        assert!(Form::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn list_queries_are_clamped_and_orderings_whitelisted() {
        let params = query_map(Some("search=+bob+&page=0&page_size=100000&ordering=-password_hash"));
        let q = list_query(&params, &["username"], 50);
        assert_eq!(q.search.as_deref(), Some("bob"));
        assert_eq!((q.page, q.page_size), (1, 200));
        assert_eq!(q.ordering, None);
        let q = list_query(&query_map(Some("ordering=-username&page=3")), &["username"], 50);
        assert_eq!((q.ordering.as_deref(), q.page, q.page_size), (Some("-username"), 3, 50));
        let p = pager(&q, 101);
        assert_eq!(p.get_attr("pages").unwrap().as_usize(), Some(3));
        assert!(p.get_attr("next").unwrap().is_none());
        assert!(p.get_attr("prev").unwrap().to_string().contains("page=2"));
    }
}
