//! The command line, as DESIGN.md's "Command line" table lays it out.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about = "Latchkey: a self-hosted identity provider in one binary")]
pub struct Cli {
    /// Configuration file (TOML). Default: ./latchkey.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything: HTTP, HTTPS and background jobs.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a fresh one-time initial-setup link (only while no administrator exists).
    SetupLink,
    /// Print a one-time login link for a user (lost-admin recovery).
    RecoveryLink {
        username: String,
        /// How long the link stays valid, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        expires: std::time::Duration,
    },
    /// Mail a user a password-reset link (the recovery flow's email, sent by the running server).
    RecoveryEmail { username: String },
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List and end login sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// App passwords: per-user secrets for clients that send `Authorization: Basic` through
    /// forward auth.
    #[command(subcommand)]
    AppPassword(AppPasswordCommand),
    /// Apply declarative YAML files (blueprints).
    #[command(subcommand)]
    Blueprint(BlueprintCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a consistent online backup of the whole store to FILE.
    Backup { file: PathBuf },
    /// Restore a backup into an empty store.
    Restore { file: PathBuf },
    /// Exit 0 if the local instance answers its liveness probe.
    Healthcheck,
    /// Brute-force throttling: see and lift blocks.
    #[command(subcommand)]
    Throttle(ThrottleCommand),
    /// Policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Consent users gave to applications.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Token signing keys: list and rotate.
    #[command(subcommand)]
    Keys(crate::keys_commands::KeysCommand),
    /// Invitations to enroll.
    #[command(subcommand)]
    Invitation(InvitationCommand),
    /// Diagnose a deployment from the outside.
    #[command(subcommand)]
    Doctor(DoctorCommand),
    /// Mail: send a test message, see the outbox.
    #[command(subcommand)]
    Email(EmailCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        username: String,
        #[arg(long)]
        email: Option<String>,
        /// Display name (default: the username).
        #[arg(long)]
        name: Option<String>,
        /// Group to join (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// A service account: no interactive login, API tokens only.
        #[arg(long)]
        service_account: bool,
    },
    /// List users.
    List {
        #[arg(long)]
        search: Option<String>,
    },
    /// Show one user.
    Show { username: String },
    /// Set a user's password (read from standard input) and end their sessions.
    SetPassword {
        username: String,
        /// Read the password from the first line of standard input (the only way; kept for clarity).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user and end their sessions.
    Disable { username: String },
    /// Enable a disabled user.
    Enable { username: String },
    /// Delete a user, their memberships, sessions and tokens.
    Delete { username: String },
    /// A user's two-factor devices.
    #[command(subcommand)]
    Mfa(UserMfaCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserMfaCommand {
    /// List a user's authenticator devices.
    List { username: String },
    /// Remove one of a user's authenticator devices (e.g. a lost phone).
    Remove { username: String, device_id: String },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group.
    Create {
        name: String,
        /// Parent group (nested groups inherit membership upwards).
        #[arg(long)]
        parent: Option<String>,
        /// Members are administrators.
        #[arg(long)]
        superuser: bool,
    },
    /// List groups.
    List,
    /// Add a user to a group.
    AddMember { group: String, username: String },
    /// Remove a user from a group.
    RemoveMember { group: String, username: String },
    /// Delete a group; its members stay, its child groups move to the top level.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; prints only the token.
    Create(TokenCreate),
}

#[derive(Debug, Subcommand)]
pub enum AppPasswordCommand {
    /// Create one; prints only the secret (shown once).
    Create {
        username: String,
        #[arg(long)]
        name: String,
        /// Limit it to this application (slug); repeatable. Default: every application.
        #[arg(long = "application", value_name = "SLUG")]
        applications: Vec<String>,
        /// Validity, e.g. 90d; default: never expires.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List a user's app passwords (never their secrets).
    List { username: String },
    /// Revoke one by name; clients using it are refused at once.
    Revoke { username: String, name: String },
}

#[derive(Debug, Args)]
pub struct TokenCreate {
    #[arg(long)]
    pub user: String,
    /// Validity, e.g. 30d; default: never expires.
    #[arg(long, value_parser = parse_duration)]
    pub expires: Option<std::time::Duration>,
    #[arg(long, default_value = "created with the CLI")]
    pub description: String,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions, of one user or of everyone.
    List { username: Option<String> },
    /// End one session by id, or every session of a user with --user.
    Revoke {
        id: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ThrottleCommand {
    /// List accounts and addresses that are blocked right now.
    List,
    /// Lift the block of an account (--user) or an address (--ip).
    Clear {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        ip: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate an expression for a user; prints `true` or `false` (exit 0) or the error (exit 2).
    Test {
        #[arg(long)]
        expression: String,
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// List a user's consent grants.
    List { username: String },
    /// Withdraw a user's consent to an application; they are asked again next time.
    Revoke {
        #[arg(long)]
        user: String,
        #[arg(long)]
        application: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BlueprintCommand {
    /// Create or update what a blueprint file declares; an invalid file changes nothing.
    Apply { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum InvitationCommand {
    /// Create an invitation; prints the link to send.
    Create {
        /// Validity, e.g. 7d; default: never expires.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<std::time::Duration>,
        /// How many accounts the link may create.
        #[arg(long, default_value_t = 1)]
        uses: i64,
        /// The invitee must use this address.
        #[arg(long)]
        email: Option<String>,
        /// Group the new user joins (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        #[arg(long, default_value = "default-enrollment-flow")]
        flow: String,
    },
    /// List invitations.
    List,
    /// Delete an invitation by id.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DoctorCommand {
    /// Fetch URL as an anonymous browser would and explain what the proxy in front of it does.
    ForwardAuth { url: String },
}

#[derive(Debug, Subcommand)]
pub enum EmailCommand {
    /// Send a test message now with the configured SMTP settings (not through the outbox).
    Test { address: String },
    /// The newest mails of the outbox with their status and last error.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print it with secrets masked.
    Check,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration like 30m, 1h or 30d ({e})"))
}
