//! Server-rendered pages. Templates are embedded in the binary; a file of the same name in
//! the data directory's `templates/` folder overrides one.

use axum::http::StatusCode;
use minijinja::{Environment, Value};
use std::path::PathBuf;

/// (name, source) of every embedded template.
const EMBEDDED: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("flow.html", include_str!("../templates/flow.html")),
    ("error.html", include_str!("../templates/error.html")),
    ("ui/layout.html", include_str!("../templates/ui/layout.html")),
    ("ui/forms.html", include_str!("../templates/ui/forms.html")),
    ("portal/applications.html", include_str!("../templates/portal/applications.html")),
    ("portal/settings.html", include_str!("../templates/portal/settings.html")),
    ("portal/app_password_created.html", include_str!("../templates/portal/app_password_created.html")),
    ("admin/base.html", include_str!("../templates/admin/base.html")),
    ("admin/overview.html", include_str!("../templates/admin/overview.html")),
    ("admin/users.html", include_str!("../templates/admin/users.html")),
    ("admin/user_new.html", include_str!("../templates/admin/user_new.html")),
    ("admin/user.html", include_str!("../templates/admin/user.html")),
    ("admin/groups.html", include_str!("../templates/admin/groups.html")),
    ("admin/group.html", include_str!("../templates/admin/group.html")),
    ("admin/applications.html", include_str!("../templates/admin/applications.html")),
    ("admin/application.html", include_str!("../templates/admin/application.html")),
    ("admin/providers.html", include_str!("../templates/admin/providers.html")),
    ("admin/provider.html", include_str!("../templates/admin/provider.html")),
    ("admin/outposts.html", include_str!("../templates/admin/outposts.html")),
    ("admin/flows.html", include_str!("../templates/admin/flows.html")),
    ("admin/policies.html", include_str!("../templates/admin/policies.html")),
    ("admin/events.html", include_str!("../templates/admin/events.html")),
    ("admin/settings.html", include_str!("../templates/admin/settings.html")),
    ("admin/certificates.html", include_str!("../templates/admin/certificates.html")),
    ("admin/_events_table.html", include_str!("../templates/admin/_events_table.html")),
    ("recovery.html", include_str!("../templates/recovery.html")),
    ("confirm_email.html", include_str!("../templates/confirm_email.html")),
    ("email/email_change.txt", include_str!("../templates/email/email_change.txt")),
    ("stages/identification.html", include_str!("../templates/stages/identification.html")),
    ("stages/password.html", include_str!("../templates/stages/password.html")),
    ("stages/prompt.html", include_str!("../templates/stages/prompt.html")),
    ("stages/access_denied.html", include_str!("../templates/stages/access_denied.html")),
    ("stages/consent.html", include_str!("../templates/stages/consent.html")),
    ("stages/email.html", include_str!("../templates/stages/email.html")),
    ("stages/authenticator_totp.html", include_str!("../templates/stages/authenticator_totp.html")),
    ("stages/authenticator_static.html", include_str!("../templates/stages/authenticator_static.html")),
    ("stages/authenticator_validate.html", include_str!("../templates/stages/authenticator_validate.html")),
    ("stages/authenticator_webauthn.html", include_str!("../templates/stages/authenticator_webauthn.html")),
    ("email/recovery.txt", include_str!("../templates/email/recovery.txt")),
    ("email/recovery.html", include_str!("../templates/email/recovery.html")),
    ("email/test.txt", include_str!("../templates/email/test.txt")),
    ("email/verification.txt", include_str!("../templates/email/verification.txt")),
    ("email/approval.txt", include_str!("../templates/email/approval.txt")),
    ("stages/generic.html", include_str!("../templates/stages/generic.html")),
];

pub struct Templates {
    env: Environment<'static>,
}

fn embedded(name: &str) -> Option<&'static str> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, src)| *src)
}

impl Templates {
    pub fn new(override_dir: Option<PathBuf>) -> Self {
        let mut env = Environment::new();
        // Optional challenge fields may be absent; templates test them rather than fail.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env.set_loader(move |name| {
            if let Some(dir) = &override_dir {
                // Names come from our own code, but never let one climb out of the folder.
                if !name.contains("..") {
                    match std::fs::read_to_string(dir.join(name)) {
                        Ok(src) => return Ok(Some(src)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(minijinja::Error::new(
                                minijinja::ErrorKind::TemplateNotFound,
                                format!("cannot read template override {name}: {e}"),
                            ))
                        }
                    }
                }
            }
            Ok(embedded(name).map(str::to_owned))
        });
        Templates { env }
    }

    pub fn has(&self, name: &str) -> bool {
        self.env.get_template(name).is_ok()
    }

    pub fn render(&self, name: &str, ctx: Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }

    /// The template for a stage component, or the generic one.
    pub fn stage_template(&self, component: &str) -> String {
        let name = format!("stages/{component}.html");
        if component.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && self.has(&name) {
            name
        } else {
            "stages/generic.html".into()
        }
    }
}

impl latchkey_core::mail::MailTemplates for Templates {
    /// `email/<name>.txt` (required) and `email/<name>.html` (optional), overridable like pages.
    fn render_mail(
        &self,
        name: &str,
        subject: &str,
        ctx: &serde_json::Value,
    ) -> latchkey_core::Result<latchkey_core::mail::Message> {
        let ctx = minijinja::Value::from_serialize(ctx);
        let text = self
            .render(&format!("email/{name}.txt"), ctx.clone())
            .map_err(|e| latchkey_core::CoreError::Internal(format!("mail template email/{name}.txt: {e:#}")))?;
        let html_name = format!("email/{name}.html");
        let html = if self.has(&html_name) {
            Some(
                self.render(&html_name, ctx)
                    .map_err(|e| latchkey_core::CoreError::Internal(format!("mail template {html_name}: {e:#}")))?,
            )
        } else {
            None
        };
        Ok(latchkey_core::mail::Message { subject: subject.to_string(), text, html })
    }
}

/// Error pages render from the embedded template only, so a broken override cannot hide errors.
pub fn render_error(status: StatusCode, message: &str, request_id: &str) -> String {
    let mut env = Environment::new();
    let rendered = env
        .add_template("base.html", include_str!("../templates/base.html"))
        .and_then(|_| env.add_template("error.html", include_str!("../templates/error.html")))
        .and_then(|_| env.get_template("error.html"))
        .and_then(|t| {
            t.render(minijinja::context! {
                status => status.as_u16(),
                reason => status.canonical_reason().unwrap_or("Error"),
                message => message,
                request_id => request_id,
            })
        });
    rendered.unwrap_or_else(|_| format!("<!doctype html><title>{}</title><p>request {request_id}</p>", status.as_u16()))
}
