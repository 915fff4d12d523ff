"""A relying party built on authlib, driven by the Rust end-to-end tests (suite/oidc.rs).

    authlib_rp.py MODE BASE SLUG CLIENT_ID CLIENT_SECRET|KEY_FILE|- REDIRECT_URI USERNAME PASSWORD

MODE is one of
  full            discovery, authorization code + PKCE (login and consent answered through
                  the JSON flow executor), token, ID token checked against JWKS, userinfo,
                  refresh with rotation, reuse of a rotated refresh token (family revoked),
                  reused code, introspection, revocation, end-session
  wrong_redirect  an unregistered redirect_uri gets an error page, never a redirect
  pkce_plain      code_challenge_method=plain is refused (error sent to the redirect_uri)
  denied          a user the application's policies refuse never gets a code
  bad_secret      a wrong client secret gets 401 invalid_client
  client_credentials  a confidential client gets an access token for itself
  device          device authorization (RFC 8628): pending, the user approves at /if/device/, tokens once
  keygen          writes a new RSA private key (PEM) to KEY_FILE and prints its public JWK
  private_key_jwt the client authenticates with authlib's PrivateKeyJWT (RS256, the key in
                  KEY_FILE): client credentials, code + PKCE, refresh, introspection (the
                  assertion's aud then the introspection endpoint), and a replayed assertion
Prints one JSON object with what it saw; exits non-zero when a check fails.
"""

import json
import re
import sys
from urllib.parse import parse_qs, urljoin, urlparse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken

MODE, BASE, SLUG, CLIENT_ID, SECRET, REDIRECT_URI, USERNAME, PASSWORD = sys.argv[1:9]
SECRET = None if SECRET == "-" else SECRET
SCOPE = "openid profile email groups offline_access"
out = {"mode": MODE}


def check(cond, what):
    if not cond:
        out["failed"] = what
        print(json.dumps(out))
        sys.exit(1)


def discover():
    r = requests.get(f"{BASE}/application/o/{SLUG}/.well-known/openid-configuration")
    check(r.status_code == 200, f"discovery answered {r.status_code}")
    return r.json()


def browse(browser, url):
    """Follows redirects like a browser, answering flows through the JSON executor.
    Returns ("callback", url), ("denied", message) or ("status", code, body)."""
    for _ in range(30):
        if url.startswith(REDIRECT_URI):
            return ("callback", url)
        full = urljoin(BASE, url)
        p = urlparse(full)
        if p.path.startswith("/if/flow/"):
            slug = p.path.split("/")[3]
            ex = f"{BASE}/api/v1/flows/executor/{slug}/"
            ch = browser.get(ex, params={"query": p.query}).json()
            while True:
                comp = ch["component"]
                if comp == "redirect":
                    url = ch["to"]
                    break
                if comp == "identification":
                    ch = browser.post(ex, json={"uid_field": USERNAME, "password": PASSWORD}).json()
                elif comp == "consent":
                    out.setdefault("consented", []).append([p["id"] for p in ch.get("permissions", [])])
                    ch = browser.post(ex, json={}).json()
                elif comp == "access_denied":
                    return ("denied", ch.get("error"))
                else:
                    check(False, f"unexpected challenge {ch}")
            continue
        r = browser.get(full, allow_redirects=False)
        if r.status_code in (301, 302, 303, 307):
            url = r.headers["Location"]
            continue
        return ("status", r.status_code, r.text)
    check(False, "too many redirects")


def session_for(meta):
    return OAuth2Session(
        CLIENT_ID,
        SECRET,
        scope=SCOPE,
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic" if SECRET else "none",
    )


def authorize(meta, browser, client, **extra):
    verifier = generate_token(64)
    nonce = generate_token(20)
    uri, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce, **extra)
    return browse(browser, uri), verifier, nonce, state


def full():
    meta = discover()
    check(meta["issuer"] == f"{BASE}/application/o/{SLUG}/", "issuer")
    check(meta["code_challenge_methods_supported"] == ["S256"], "pkce methods")
    jwks = requests.get(meta["jwks_uri"]).json()
    out["jwks_algs"] = [k["alg"] for k in jwks["keys"]]
    keys = JsonWebKey.import_key_set(jwks)

    browser = requests.Session()
    client = session_for(meta)
    result, verifier, nonce, state = authorize(meta, browser, client)
    check(result[0] == "callback", f"no code: {result}")
    callback = result[1]
    q = parse_qs(urlparse(callback).query)
    check(q.get("state") == [state], "state echoed")
    code = q["code"][0]

    token = client.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier)
    out["token_keys"] = sorted(token.keys())
    check(token["token_type"].lower() == "bearer", "token_type")
    claims = jwt.decode(
        token["id_token"],
        keys,
        claims_cls=CodeIDToken,
        claims_options={"iss": {"essential": True, "value": meta["issuer"]}},
        claims_params={"nonce": nonce, "client_id": CLIENT_ID, "access_token": token["access_token"]},
    )
    claims.validate(leeway=5)
    out["id_token"] = dict(claims)
    out["id_token_alg"] = claims.header["alg"]

    info = client.get(meta["userinfo_endpoint"])
    check(info.status_code == 200, f"userinfo {info.status_code}")
    out["userinfo"] = info.json()
    check(out["userinfo"]["sub"] == claims["sub"], "userinfo sub == id_token sub")

    # The code works once.
    again = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier, "client_id": CLIENT_ID, **({"client_secret": SECRET} if SECRET else {})},
    )
    out["reused_code"] = [again.status_code, again.json().get("error")]

    # That reuse revoked what the code gave: the first refresh token is dead now.
    dead = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": CLIENT_ID, **({"client_secret": SECRET} if SECRET else {})},
    )
    out["refresh_after_code_reuse"] = [dead.status_code, dead.json().get("error")]

    # A fresh authorization: refresh rotates; the rotated token presented again ends the family.
    client = session_for(meta)
    result, verifier, nonce, state = authorize(meta, browser, client)
    check(result[0] == "callback", f"second authorization: {result}")
    token = client.fetch_token(meta["token_endpoint"], authorization_response=result[1], code_verifier=verifier)
    first_rt = token["refresh_token"]
    refreshed = client.refresh_token(meta["token_endpoint"], refresh_token=first_rt)
    check(refreshed["refresh_token"] != first_rt, "refresh token rotated")
    out["refreshed_keys"] = sorted(refreshed.keys())
    second_rt = refreshed["refresh_token"]
    info = client.get(meta["userinfo_endpoint"])
    check(info.status_code == 200, "userinfo with the refreshed token")

    if SECRET:
        intro = requests.post(meta["introspection_endpoint"], data={"token": refreshed["access_token"]}, auth=(CLIENT_ID, SECRET))
        out["introspect"] = intro.json()
        intro_rt = requests.post(meta["introspection_endpoint"], data={"token": second_rt}, auth=(CLIENT_ID, SECRET))
        out["introspect_refresh"] = intro_rt.json().get("active")
        anon = requests.post(meta["introspection_endpoint"], data={"token": refreshed["access_token"]})
        out["introspect_unauthenticated"] = anon.status_code

    reuse = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": first_rt, "client_id": CLIENT_ID, **({"client_secret": SECRET} if SECRET else {})},
    )
    out["reused_refresh"] = [reuse.status_code, reuse.json().get("error")]
    family = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": second_rt, "client_id": CLIENT_ID, **({"client_secret": SECRET} if SECRET else {})},
    )
    out["family_after_reuse"] = [family.status_code, family.json().get("error")]

    # Revocation of a live refresh token.
    client = session_for(meta)
    result, verifier, nonce, state = authorize(meta, browser, client)
    token = client.fetch_token(meta["token_endpoint"], authorization_response=result[1], code_verifier=verifier)
    rv = client.revoke_token(meta["revocation_endpoint"], token=token["refresh_token"], token_type_hint="refresh_token")
    out["revoke_status"] = rv.status_code
    after = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": CLIENT_ID, **({"client_secret": SECRET} if SECRET else {})},
    )
    out["refresh_after_revoke"] = after.status_code

    # RP-initiated logout ends the Latchkey session; prompt=none then says login_required.
    end = browser.get(meta["end_session_endpoint"], params={"post_logout_redirect_uri": REDIRECT_URI, "state": "bye"}, allow_redirects=False)
    out["end_session"] = [end.status_code, end.headers.get("Location")]
    client = session_for(meta)
    result, *_ = authorize(meta, browser, client, prompt="none")
    out["prompt_none_after_logout"] = parse_qs(urlparse(result[1]).query).get("error") if result[0] == "callback" else result


def wrong_redirect():
    meta = discover()
    browser = requests.Session()
    client = OAuth2Session(CLIENT_ID, SECRET, scope=SCOPE, redirect_uri="https://evil.test/cb", code_challenge_method="S256")
    uri, _ = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=generate_token(64))
    r = browser.get(uri, allow_redirects=False)
    out["status"] = r.status_code
    out["location"] = r.headers.get("Location")


def pkce_plain():
    meta = discover()
    browser = requests.Session()
    r = browser.get(
        meta["authorization_endpoint"],
        params={"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "response_type": "code", "scope": "openid", "state": "s1", "code_challenge": generate_token(50), "code_challenge_method": "plain"},
        allow_redirects=False,
    )
    out["status"] = r.status_code
    loc = r.headers.get("Location", "")
    out["location_is_client"] = loc.startswith(REDIRECT_URI)
    out["error"] = parse_qs(urlparse(loc).query).get("error")
    out["state"] = parse_qs(urlparse(loc).query).get("state")


def denied():
    meta = discover()
    browser = requests.Session()
    client = session_for(meta)
    result, *_ = authorize(meta, browser, client)
    out["result"] = list(result[:2])


def bad_secret():
    meta = discover()
    r = requests.post(meta["token_endpoint"], data={"grant_type": "authorization_code", "code": "x"}, auth=(CLIENT_ID, "wrong"))
    out["status"] = r.status_code
    out["error"] = r.json().get("error")
    out["www_authenticate"] = r.headers.get("WWW-Authenticate")


def client_credentials():
    meta = discover()
    check("client_credentials" in meta["grant_types_supported"], "client_credentials advertised")
    client = OAuth2Session(CLIENT_ID, SECRET, scope="openid profile", token_endpoint_auth_method="client_secret_post")
    token = client.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    out["token_keys"] = sorted(token.keys())
    keys = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"]).json())
    claims = jwt.decode(token["access_token"], keys)
    claims.validate()
    out["sub"] = claims["sub"]
    out["userinfo"] = client.get(meta["userinfo_endpoint"]).json()
    intro = requests.post(meta["introspection_endpoint"], data={"token": token["access_token"]}, auth=(CLIENT_ID, SECRET))
    out["active"] = intro.json().get("active")


def device():
    meta = discover()
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    check(grant in meta["grant_types_supported"], "device grant advertised")
    auth = (CLIENT_ID, SECRET) if SECRET else None
    own = {} if SECRET else {"client_id": CLIENT_ID}
    d = requests.post(meta["device_authorization_endpoint"], data={"scope": "openid profile offline_access", **own}, auth=auth)
    check(d.status_code == 200, f"device authorization {d.status_code} {d.text}")
    d = d.json()

    def poll():
        return requests.post(meta["token_endpoint"], data={"grant_type": grant, "device_code": d["device_code"], **own}, auth=auth)

    out["pending"] = poll().json().get("error")
    browser = requests.Session()
    result = browse(browser, d["verification_uri_complete"])
    check(result[0] == "status" and result[1] == 200, f"device page: {result}")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', result[2]).group(1)
    forged = browser.post(f"{BASE}/if/device/", data={"csrf_token": "forged", "code": d["user_code"], "action": "approve"})
    out["forged_status"] = forged.status_code
    r = browser.post(f"{BASE}/if/device/", data={"csrf_token": csrf, "code": d["user_code"].lower(), "action": "approve"})
    out["approve_status"] = r.status_code
    tok = poll()
    check(tok.status_code == 200, f"device token {tok.status_code} {tok.text}")
    tok = tok.json()
    out["token_keys"] = sorted(tok.keys())
    keys = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"]).json())
    claims = jwt.decode(tok["id_token"], keys)
    claims.validate()
    out["preferred_username"] = claims.get("preferred_username")
    out["again"] = poll().json().get("error")


def keygen():
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048)
    with open(SECRET, "w") as f:
        f.write(key.as_pem(private=True).decode())
    out["jwk"] = key.as_dict(private=False)


def private_key_jwt():
    from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
    from joserfc.jwk import RSAKey

    meta = discover()
    check("private_key_jwt" in meta["token_endpoint_auth_methods_supported"], "private_key_jwt advertised")
    check("RS256" in meta["token_endpoint_auth_signing_alg_values_supported"], "RS256 advertised")
    with open(SECRET) as f:
        key = RSAKey.import_key(f.read())
    keys = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"]).json())

    def session(audience, **kw):
        s = OAuth2Session(CLIENT_ID, key, token_endpoint_auth_method="private_key_jwt", revocation_endpoint_auth_method="private_key_jwt", **kw)
        # audience None: authlib puts the URL it is calling in aud.
        s.register_client_auth_method(PrivateKeyJWT(audience))
        return s

    # authlib's defaults: RS256, an assertion valid for an hour, no client_id in the body.
    cc = session(meta["token_endpoint"], scope="openid profile").fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    claims = jwt.decode(cc["access_token"], keys)
    claims.validate()
    out["client_credentials_sub"] = claims["sub"]

    browser = requests.Session()
    client = session(meta["token_endpoint"], scope=SCOPE, redirect_uri=REDIRECT_URI, code_challenge_method="S256")
    result, verifier, nonce, state = authorize(meta, browser, client)
    check(result[0] == "callback", f"no code: {result}")
    token = client.fetch_token(meta["token_endpoint"], authorization_response=result[1], code_verifier=verifier)
    id_token = jwt.decode(token["id_token"], keys, claims_cls=CodeIDToken, claims_params={"nonce": nonce, "client_id": CLIENT_ID})
    id_token.validate(leeway=5)
    out["id_token_username"] = id_token["preferred_username"]
    refreshed = client.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    out["refreshed"] = refreshed["refresh_token"] != token["refresh_token"]

    intro = session(None).introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"])
    out["introspect"] = [intro.status_code, intro.json().get("active")]

    # One assertion, sent twice: the second is a replay.
    assertion = private_key_jwt_sign(key, CLIENT_ID, meta["token_endpoint"], alg="RS256")
    body = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    first = requests.post(meta["token_endpoint"], data=body)
    again = requests.post(meta["token_endpoint"], data=body)
    out["replay"] = [first.status_code, again.status_code, again.json().get("error"), again.headers.get("WWW-Authenticate")]


{"keygen": keygen, "private_key_jwt": private_key_jwt, "device": device, "client_credentials": client_credentials, "full": full, "wrong_redirect": wrong_redirect, "pkce_plain": pkce_plain, "denied": denied, "bad_secret": bad_secret}[MODE]()
print(json.dumps(out))
