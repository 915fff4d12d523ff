// A relying party built on Node `openid-client` (certified RP library), driven by the Rust
// end-to-end test crates/latchkey/tests/suite/oidc_node.rs.
//
//   node openid_client_rp.mjs MODE BASE SLUG CLIENT_ID SECRET|- REDIRECT_URI USERNAME PASSWORD [BACKCHANNEL_PORT [KEY_PEM KEY_KID]]
//
// MODE is one of
//   full    discovery → authorization code + PKCE (login and consent answered through the JSON
//           flow executor with a cookie jar) → token → ID token checked against JWKS
//           (non-repudiation checks) → userinfo → refresh with rotation → reuse of the rotated
//           token (family revoked) → reused code (what it issued revoked) → prompt=consent →
//           form_post → revoke → end-session with back-channel logout received and verified
//   public  a public client (PKCE only, no secret) through code, token, userinfo and refresh
//   errors  wrong redirect_uri, wrong client secret, prompt=none without a session,
//           client credentials, device flow
//   private_key_jwt  the client authenticates with `PrivateKeyJwt` (KEY_PEM: its PKCS#8 ES256
//           key, KEY_KID: the key's id): code + PKCE → token → refresh → client credentials →
//           introspection → revocation; then a client secret and an unknown key, both refused
// Prints one JSON object with what it saw (last line); exits non-zero when a check fails.

import * as oidc from "openid-client";
import * as jose from "jose";
import http from "node:http";

const [MODE, BASE, SLUG, CLIENT_ID, SECRET_ARG, REDIRECT_URI, USERNAME, PASSWORD, BC_PORT, KEY_PEM, KEY_KID] =
  process.argv.slice(2);
const SECRET = SECRET_ARG === "-" ? undefined : SECRET_ARG;
const SCOPE = "openid profile email groups offline_access";
const ISSUER = `${BASE}/application/o/${SLUG}/`;
const out = { mode: MODE };

function check(cond, what) {
  if (!cond) {
    out.failed = what;
    console.log(JSON.stringify(out));
    process.exit(1);
  }
}

/** What an openid-client call threw, in protocol terms. */
async function failure(promise) {
  try {
    await promise;
    return { ok: true };
  } catch (e) {
    const r = { name: e.name, error: e.error ?? e.code, status: e.status ?? e.response?.status };
    if (e.name === "WWWAuthenticateChallengeError") {
      r.challenge = e.cause?.[0]?.scheme;
      try {
        r.error = (await e.response.json()).error;
      } catch {
        // The body was read already; the status and challenge say enough.
      }
    }
    return r;
  }
}

/** A browser: follows redirects by hand with a cookie jar, answers flows through the executor. */
class Browser {
  constructor() {
    this.cookies = new Map();
  }
  headers(extra = {}) {
    const cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
    return cookie ? { cookie, ...extra } : extra;
  }
  keep(res) {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(";");
      const i = pair.indexOf("=");
      const [name, value] = [pair.slice(0, i).trim(), pair.slice(i + 1).trim()];
      if (value === "" || /max-age=0/i.test(c)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }
  async fetch(url, init = {}) {
    const res = await fetch(url, { ...init, redirect: "manual", headers: this.headers(init.headers) });
    this.keep(res);
    return res;
  }
  async executor(slug, method, query, body) {
    const ex = `${BASE}/api/v1/flows/executor/${slug}/`;
    const url = method === "GET" ? `${ex}?query=${encodeURIComponent(query)}` : ex;
    const init = { method };
    if (body) {
      init.body = JSON.stringify(body);
      init.headers = { "content-type": "application/json" };
    }
    const res = await this.fetch(url, init);
    return res.json();
  }
  /** Follows `url` until the client's redirect URI. Returns {callback} | {denied} | {status, body, headers}. */
  async browse(url) {
    for (let i = 0; i < 30; i++) {
      if (url.startsWith(REDIRECT_URI)) return { callback: url };
      const full = new URL(url, BASE);
      if (full.pathname.startsWith("/if/flow/")) {
        const slug = full.pathname.split("/")[3];
        let ch = await this.executor(slug, "GET", full.search.slice(1));
        for (;;) {
          if (ch.component === "redirect") {
            url = ch.to;
            break;
          } else if (ch.component === "identification") {
            (out.identification_hints ??= []).push(ch.pending_user_identifier ?? null);
            ch = await this.executor(slug, "POST", "", { uid_field: USERNAME, password: PASSWORD });
          } else if (ch.component === "consent") {
            (out.consented ??= []).push((ch.permissions ?? []).map((p) => p.id));
            ch = await this.executor(slug, "POST", "", {});
          } else if (ch.component === "access_denied") {
            return { denied: ch.error };
          } else {
            check(false, `unexpected challenge ${JSON.stringify(ch)}`);
          }
        }
        continue;
      }
      const res = await this.fetch(full.href);
      if ([301, 302, 303, 307].includes(res.status)) {
        url = res.headers.get("location");
        continue;
      }
      return { status: res.status, body: await res.text(), headers: res.headers };
    }
    check(false, "too many redirects");
  }
}

async function configure(secret = SECRET, auth) {
  const clientAuth = auth ?? (secret ? oidc.ClientSecretBasic(secret) : oidc.None());
  const config = await oidc.discovery(new URL(ISSUER), CLIENT_ID, secret ? { client_secret: secret } : {}, clientAuth, {
    execute: [oidc.allowInsecureRequests],
  });
  // ID tokens from the token endpoint are checked against the published JWKS too.
  oidc.enableNonRepudiationChecks(config);
  return config;
}

/** One authorization: returns the callback URL (or what stopped it) and the checks. */
async function authorize(config, browser, extra = {}) {
  const verifier = oidc.randomPKCECodeVerifier();
  const checks = { pkceCodeVerifier: verifier, expectedState: oidc.randomState(), expectedNonce: oidc.randomNonce() };
  const url = oidc.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT_URI,
    scope: SCOPE,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
    state: checks.expectedState,
    nonce: checks.expectedNonce,
    ...extra,
  });
  return { result: await browser.browse(url.href), checks };
}

async function login(config, browser, extra) {
  const { result, checks } = await authorize(config, browser, extra);
  check(result.callback, `no code: ${JSON.stringify(result)}`);
  const tokens = await oidc.authorizationCodeGrant(config, new URL(result.callback), { ...checks, idTokenExpected: true });
  return { tokens, callback: result.callback, checks };
}

/** Waits for the back-channel logout POST on BC_PORT. */
function backchannelReceiver() {
  let resolve;
  const received = new Promise((r) => (resolve = r));
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      res.writeHead(200).end();
      resolve({ contentType: req.headers["content-type"], body: new URLSearchParams(body) });
    });
  });
  const listening = new Promise((r) => server.listen(Number(BC_PORT), "127.0.0.1", r));
  return { received, listening, close: () => server.close() };
}

async function full() {
  const config = await configure();
  const meta = config.serverMetadata();
  check(meta.issuer === ISSUER, "issuer");
  out.response_modes = meta.response_modes_supported;
  const jwks = await (await fetch(meta.jwks_uri)).json();
  out.jwks_algs = jwks.keys.map((k) => k.alg);
  const browser = new Browser();

  const first = await login(config, browser, { login_hint: USERNAME });
  const claims = first.tokens.claims();
  out.id_token = claims;
  out.id_token_alg = jose.decodeProtectedHeader(first.tokens.id_token).alg;
  out.userinfo = await oidc.fetchUserInfo(config, first.tokens.access_token, claims.sub);

  // Refresh rotates; the rotated token presented again ends the whole family.
  const r1 = first.tokens.refresh_token;
  const second = await oidc.refreshTokenGrant(config, r1);
  out.rotated = second.refresh_token !== r1 && !!second.refresh_token;
  out.refreshed_id_token_sub = second.claims()?.sub;
  out.reused_refresh = await failure(oidc.refreshTokenGrant(config, r1));
  out.family_after_reuse = await failure(oidc.refreshTokenGrant(config, second.refresh_token));

  // A code used twice: refused, and the refresh token issued from it is revoked.
  const again = await login(config, browser);
  out.reused_code = await failure(
    oidc.authorizationCodeGrant(config, new URL(again.callback), { ...again.checks, idTokenExpected: true }),
  );
  out.refresh_after_code_reuse = await failure(oidc.refreshTokenGrant(config, again.tokens.refresh_token));

  // Consent was remembered; prompt=consent asks again.
  const before = (out.consented ?? []).length;
  await login(config, browser, { prompt: "consent" });
  out.consent_prompted_again = (out.consented ?? []).length === before + 1;

  // response_mode=form_post: an HTML form posted to the redirect URI.
  const { result, checks } = await authorize(config, browser, { response_mode: "form_post" });
  check(result.status === 200, `form_post page: ${JSON.stringify(result)}`);
  out.form_post_csp = result.headers.get("content-security-policy");
  const fields = Object.fromEntries([...result.body.matchAll(/name="([^"]+)" value="([^"]*)"/g)].map((m) => [m[1], m[2]]));
  out.form_post_action = /<form method="post" action="([^"]+)"/.exec(result.body)?.[1];
  out.form_post_has_button = result.body.includes('<button type="submit">');
  const posted = new Request(REDIRECT_URI, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(fields),
  });
  const viaForm = await oidc.authorizationCodeGrant(config, posted, { ...checks, idTokenExpected: true });
  out.form_post_sub = viaForm.claims().sub;

  // Introspection and revocation.
  const live = await oidc.refreshTokenGrant(config, viaForm.refresh_token);
  out.introspect = await oidc.tokenIntrospection(config, live.access_token);
  await oidc.tokenRevocation(config, live.refresh_token);
  out.refresh_after_revoke = await failure(oidc.refreshTokenGrant(config, live.refresh_token));

  // End-session: the Latchkey session ends, the client is told over the back channel.
  const receiver = backchannelReceiver();
  await receiver.listening;
  const end = oidc.buildEndSessionUrl(config, {
    id_token_hint: live.id_token,
    post_logout_redirect_uri: REDIRECT_URI,
    state: "bye",
  });
  const ended = await browser.fetch(end.href);
  out.end_session = [ended.status, ended.headers.get("location")];
  const timeout = new Promise((r) => setTimeout(() => r(null), 10000));
  const logout = await Promise.race([receiver.received, timeout]);
  receiver.close();
  check(logout, "no back-channel logout token arrived");
  const token = logout.body.get("logout_token");
  const keys = jose.createRemoteJWKSet(new URL(meta.jwks_uri));
  const verified = await jose.jwtVerify(token, keys, { issuer: ISSUER, audience: CLIENT_ID, typ: "logout+jwt" });
  out.logout_token = verified.payload;
  out.logout_sid_matches = verified.payload.sid === claims.sid;
  const none = await authorize(config, browser, { prompt: "none" });
  out.prompt_none_after_logout = new URL(none.result.callback ?? BASE).searchParams.get("error");
}

async function publicClient() {
  const config = await configure(undefined);
  const browser = new Browser();
  const { tokens } = await login(config, browser);
  const claims = tokens.claims();
  out.id_token = claims;
  out.id_token_alg = jose.decodeProtectedHeader(tokens.id_token).alg;
  out.jwks_algs = (await (await fetch(config.serverMetadata().jwks_uri)).json()).keys.map((k) => k.alg);
  out.userinfo = await oidc.fetchUserInfo(config, tokens.access_token, claims.sub);
  const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token);
  out.refreshed = !!refreshed.access_token && refreshed.refresh_token !== tokens.refresh_token;
  if (BC_PORT) {
    // Logging out through Latchkey's own logout flow also tells the client over the back channel.
    const receiver = backchannelReceiver();
    await receiver.listening;
    const flow = await browser.executor("default-invalidation-flow", "GET", "");
    out.logout_flow = flow.component;
    const timeout = new Promise((r) => setTimeout(() => r(null), 10000));
    const logout = await Promise.race([receiver.received, timeout]);
    receiver.close();
    check(logout, "no back-channel logout token after the logout flow");
    const keys = jose.createRemoteJWKSet(new URL(config.serverMetadata().jwks_uri));
    const verified = await jose.jwtVerify(logout.body.get("logout_token"), keys, { issuer: ISSUER, audience: CLIENT_ID });
    out.flow_logout_token_sid_matches = verified.payload.sid === claims.sid;
  }
}

async function errors() {
  const config = await configure();
  const meta = config.serverMetadata();

  // An unregistered redirect_uri: an error page, never a redirect.
  const wrong = oidc.buildAuthorizationUrl(config, {
    redirect_uri: "http://evil.example.test/cb",
    scope: "openid",
    code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
    code_challenge_method: "S256",
  });
  const page = await fetch(wrong, { redirect: "manual", headers: { accept: "text/html" } });
  out.wrong_redirect = [page.status, page.headers.get("location")];

  // prompt=none without a session: login_required at the client.
  const none = await authorize(config, new Browser(), { prompt: "none" });
  check(none.result.callback, `prompt=none did not return: ${JSON.stringify(none.result)}`);
  out.prompt_none = await failure(oidc.authorizationCodeGrant(config, new URL(none.result.callback), none.checks));

  // A wrong client secret: 401 invalid_client with a challenge.
  const bad = await configure("not-the-secret");
  out.bad_secret = await failure(oidc.clientCredentialsGrant(bad, { scope: "openid" }));
  const raw = await fetch(meta.token_endpoint, {
    method: "POST",
    headers: {
      authorization: `Basic ${Buffer.from(`${CLIENT_ID}:not-the-secret`).toString("base64")}`,
      "content-type": "application/x-www-form-urlencoded",
    },
    body: "grant_type=client_credentials",
  });
  out.bad_secret_raw = [raw.status, raw.headers.get("www-authenticate"), (await raw.json()).error];

  // Client credentials: a token for the client itself.
  const cc = await oidc.clientCredentialsGrant(config, { scope: "openid profile" });
  out.client_credentials = { keys: Object.keys(cc).sort(), claims: jose.decodeJwt(cc.access_token) };
  out.client_credentials_introspect = (await oidc.tokenIntrospection(config, cc.access_token)).active;

  // Device flow: openid-client polls while the user approves the code in a browser.
  const device = await oidc.initiateDeviceAuthorization(config, { scope: "openid profile offline_access" });
  const polling = oidc.pollDeviceAuthorizationGrant(config, device);
  const browser = new Browser();
  const shown = await browser.browse(device.verification_uri_complete);
  check(shown.status === 200, `device page: ${JSON.stringify(shown)}`);
  const csrf = /name="csrf_token" value="([^"]+)"/.exec(shown.body)[1];
  const approved = await browser.fetch(`${BASE}/if/device/`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ csrf_token: csrf, code: device.user_code, action: "approve" }),
  });
  out.device_approve_status = approved.status;
  const deviceTokens = await polling;
  out.device_username = deviceTokens.claims()?.preferred_username;
  out.device_has_refresh = !!deviceTokens.refresh_token;
}

async function privateKeyJwt() {
  const key = await jose.importPKCS8(KEY_PEM, "ES256");
  const keyed = (privateKey) =>
    oidc.discovery(new URL(ISSUER), CLIENT_ID, {}, oidc.PrivateKeyJwt({ key: privateKey, kid: KEY_KID }), {
      execute: [oidc.allowInsecureRequests],
    });
  const config = await keyed(key);
  oidc.enableNonRepudiationChecks(config);
  const meta = config.serverMetadata();
  out.auth_methods = meta.token_endpoint_auth_methods_supported;
  out.auth_signing_algs = meta.token_endpoint_auth_signing_alg_values_supported;

  const browser = new Browser();
  const { tokens } = await login(config, browser);
  out.id_token = tokens.claims();
  const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token);
  out.refreshed = !!refreshed.access_token && !!refreshed.refresh_token && refreshed.refresh_token !== tokens.refresh_token;
  out.refreshed_sub = refreshed.claims()?.sub;
  const cc = await oidc.clientCredentialsGrant(config, { scope: "openid profile" });
  out.client_credentials_sub = jose.decodeJwt(cc.access_token).sub;
  out.introspect = (await oidc.tokenIntrospection(config, refreshed.access_token)).active;
  await oidc.tokenRevocation(config, refreshed.refresh_token);
  out.refresh_after_revoke = await failure(oidc.refreshTokenGrant(config, refreshed.refresh_token));

  // The provider takes only private_key_jwt: a client secret is refused.
  const withSecret = await configure("some-secret");
  out.secret_refused = await failure(oidc.clientCredentialsGrant(withSecret, { scope: "openid" }));
  // A key the provider does not know, under the registered kid.
  const { privateKey } = await jose.generateKeyPair("ES256");
  out.unknown_key = await failure(oidc.clientCredentialsGrant(await keyed(privateKey), { scope: "openid" }));
}

try {
  await { full, public: publicClient, errors, private_key_jwt: privateKeyJwt }[MODE]();
} catch (e) {
  check(false, `${e.name}: ${e.message} ${e.error ?? ""} ${e.cause ? JSON.stringify(e.cause) : ""}`);
}
console.log(JSON.stringify(out));
