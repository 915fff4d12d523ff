// The WebAuthn ceremonies of the flow pages (the only script Latchkey's pages use).
// The server puts its options (JSON, binary fields as base64url) in a
// <script type="application/json"> block; this converts them for navigator.credentials, runs
// the ceremony, and posts the credential back as JSON text in a hidden form field.
(function () {
  "use strict";

  function decode(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const raw = atob(b64 + "===".slice((b64.length + 3) % 4));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  function encode(buffer) {
    const bytes = new Uint8Array(buffer);
    let raw = "";
    for (const b of bytes) raw += String.fromCharCode(b);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function withIds(list) {
    return (list || []).map((c) => Object.assign({}, c, { id: decode(c.id) }));
  }

  function creationOptions(options) {
    const pk = Object.assign({}, options.publicKey);
    pk.challenge = decode(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: decode(pk.user.id) });
    pk.excludeCredentials = withIds(pk.excludeCredentials);
    return pk;
  }

  function requestOptions(options) {
    const pk = Object.assign({}, options.publicKey);
    pk.challenge = decode(pk.challenge);
    pk.allowCredentials = withIds(pk.allowCredentials);
    return pk;
  }

  function registrationJSON(cred) {
    const r = cred.response;
    return {
      id: cred.id,
      rawId: encode(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: encode(r.attestationObject),
        clientDataJSON: encode(r.clientDataJSON),
        transports: typeof r.getTransports === "function" ? r.getTransports() : undefined,
      },
      extensions: cred.getClientExtensionResults(),
    };
  }

  function assertionJSON(cred) {
    const r = cred.response;
    return {
      id: cred.id,
      rawId: encode(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: encode(r.authenticatorData),
        clientDataJSON: encode(r.clientDataJSON),
        signature: encode(r.signature),
        userHandle: r.userHandle ? encode(r.userHandle) : null,
      },
      extensions: cred.getClientExtensionResults(),
    };
  }

  function options(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function post(form, field, value) {
    form.querySelector('input[name="' + field + '"]').value = JSON.stringify(value);
    form.submit();
  }

  function report(form, error) {
    // A cancelled prompt is not an error worth more than a line.
    const p = form.querySelector(".webauthn-status");
    if (p) p.textContent = error && error.name === "NotAllowedError"
      ? "The request was cancelled or timed out. Try again."
      : "Your browser could not use the key: " + (error && error.message ? error.message : error);
  }

  // Setup: register a security key or passkey.
  const register = document.getElementById("webauthn-register");
  if (register) {
    const opts = options("webauthn-registration");
    register.addEventListener("submit", (event) => {
      event.preventDefault();
      navigator.credentials.create({ publicKey: creationOptions(opts) })
        .then((cred) => post(register, "response", registrationJSON(cred)))
        .catch((e) => report(register, e));
    });
  }

  // Second factor: sign the challenge with one of the user's keys.
  const validate = document.getElementById("webauthn-validate");
  if (validate) {
    const opts = options("webauthn-assertion");
    validate.addEventListener("submit", (event) => {
      event.preventDefault();
      navigator.credentials.get({ publicKey: requestOptions(opts) })
        .then((cred) => post(validate, "webauthn", assertionJSON(cred)))
        .catch((e) => report(validate, e));
    });
  }

  // Passwordless: passkey autofill on the username field (conditional mediation) and a
  // button for the browser's own passkey dialog.
  const passkey = document.getElementById("passkey-login");
  if (passkey && window.PublicKeyCredential) {
    const opts = options("passkey-challenge");
    let pending = null;
    const run = (mediation) => {
      if (pending) pending.abort();
      pending = new AbortController();
      const request = { publicKey: requestOptions(opts), signal: pending.signal };
      if (mediation) request.mediation = mediation;
      return navigator.credentials.get(request).then((cred) => {
        if (cred) post(passkey, "passkey", assertionJSON(cred));
      });
    };
    if (typeof PublicKeyCredential.isConditionalMediationAvailable === "function") {
      PublicKeyCredential.isConditionalMediationAvailable().then((available) => {
        // Aborted when the button is used instead: nothing to report then.
        if (available) run("conditional").catch(() => {});
      });
    }
    passkey.addEventListener("submit", (event) => {
      event.preventDefault();
      run(null).catch((e) => report(passkey, e));
    });
    passkey.hidden = false;
  }
})();
