// Drives real headless Chromium with a CDP virtual authenticator (CTAP2, internal transport,
// resident keys, user verification) through Latchkey's WebAuthn pages: registers a passkey,
// logs in with password + passkey, passwordless with the passkey, remembers the browser, and
// finally presents a cloned key whose signature counter went backwards.
// Usage: node webauthn.mjs BASE_URL USERNAME PASSWORD   (BASE_URL must be http://localhost:PORT)
// Each step waits for a file STEP_DIR/<name>.go before it runs when STEP_DIR is set, so the
// test can act between steps (sign out everywhere). Prints one JSON line with what it saw.
import { chromium } from 'playwright-core';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const [base, username, password] = process.argv.slice(2);
const stepDir = process.env.STEP_DIR;
const seen = {};

async function gate(name) {
  if (!stepDir) return;
  console.log(JSON.stringify({ waiting: name }));
  // Bounded: a test that died between steps must not leave the browser waiting forever.
  for (let waited = 0; !existsSync(join(stepDir, `${name}.go`)); waited += 50) {
    if (waited > 120000) throw new Error(`step ${name} was never released`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  process.on('exit', (code) => {
    if (code !== 0) console.error(JSON.stringify({ seen, console: consoleLines }));
  });
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });

  const loginPage = `${base}/if/flow/default-authentication-flow/`;
  // The authenticator answers by itself (user presence simulated) only while this is on.
  async function presence(enabled) {
    await cdp.send('WebAuthn.setAutomaticPresenceSimulation', { authenticatorId, enabled });
  }
  // Username and password on the identification step; returns where the browser landed.
  // The page's passkey autofill request stays unanswered meanwhile.
  async function passwordLogin() {
    await presence(false);
    await page.goto(loginPage);
    await page.fill('#uid_field', username);
    await page.fill('#password', password);
    await Promise.all([page.waitForNavigation(), page.click('form:not(#passkey-login) button[type="submit"]')]);
    await page.waitForLoadState('load');
    return new URL(page.url()).pathname;
  }
  // Logging out lands on the login page, whose passkey autofill request would answer itself
  // (and log in again) while presence is simulated: presence goes off first, and the browser
  // leaves the page so no request is pending when the next step changes the credentials.
  async function logout() {
    await presence(false);
    await page.goto(`${base}/if/flow/default-invalidation-flow/`);
    await page.goto('about:blank');
  }
  // Leaves the session in the store (for the test to inspect) but not in the browser.
  async function forgetSession() {
    await context.clearCookies({ name: 'latchkey_session' });
  }
  async function useKey(remember) {
    await page.waitForSelector('#webauthn-validate');
    if (remember) await page.check('#webauthn-validate input[name="remember_device"]');
    await presence(true);
    await Promise.all([page.waitForNavigation(), page.click('#webauthn-validate button[type="submit"]')]);
    await page.waitForLoadState('load');
  }

  // 1. Password login, then register a passkey through the setup flow.
  seen.first_login = await passwordLogin();
  await page.goto(`${base}/if/flow/default-authenticator-webauthn-setup/`);
  await page.fill('#name', 'Virtual passkey');
  await presence(true);
  await page.click('#webauthn-register button[type="submit"]');
  await page.waitForURL('**/if/user/**', { timeout: 10000 }).catch(async (e) => {
    seen.register_page = (await page.content()).slice(0, 4000);
    seen.console = consoleLines;
    throw e;
  });
  const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
  seen.credentials = credentials.length;
  seen.resident = credentials.every((c) => c.isResidentCredential);
  await logout();

  // 2. Password + passkey as the second factor.
  await gate('second-factor');
  await passwordLogin();
  seen.asked_second_factor = (await page.$('#webauthn-validate')) !== null;
  await useKey(false);
  seen.second_factor = new URL(page.url()).pathname;
  await forgetSession();

  // 3. Passwordless with the button: the browser's passkey dialog.
  await gate('passwordless');
  await presence(false);
  await page.goto(loginPage);
  seen.autocomplete = await page.getAttribute('#uid_field', 'autocomplete');
  await page.waitForSelector('#passkey-login button', { state: 'visible' });
  await presence(true);
  await Promise.all([page.waitForURL('**/if/user/**'), page.click('#passkey-login button')]);
  seen.passwordless = new URL(page.url()).pathname;
  await forgetSession();
  // … and by autofill alone (conditional mediation): the page's pending request is answered
  // as soon as the authenticator is present, without any click.
  await page.goto(loginPage);
  await page.waitForURL('**/if/user/**');
  seen.conditional_ui = new URL(page.url()).pathname;
  await logout();

  // 4. Remember this browser: the next login skips the second factor.
  await gate('remember');
  await passwordLogin();
  await useKey(true);
  seen.remembered_login = new URL(page.url()).pathname;
  await logout();
  seen.skipped_second_factor = await passwordLogin();
  await logout();

  // 5. After "sign out everywhere" (done by the test between the steps) it asks again.
  await gate('after-sign-out-everywhere');
  seen.after_sign_out_everywhere = await passwordLogin();
  seen.asked_again = (await page.$('#webauthn-validate')) !== null;
  await useKey(false);
  seen.after_sign_out_everywhere_done = new URL(page.url()).pathname;
  await logout();

  // 6. A cloned key whose signature counter is behind the stored one is refused.
  await gate('cloned');
  const [cred] = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
  seen.counter_before_clone = cred.signCount;
  await cdp.send('WebAuthn.removeCredential', { authenticatorId, credentialId: cred.credentialId });
  await cdp.send('WebAuthn.addCredential', { authenticatorId, credential: { ...cred, signCount: 0 } });
  await passwordLogin();
  await useKey(false);
  seen.cloned_path = new URL(page.url()).pathname;
  seen.cloned_error = (await page.textContent('.errors').catch(() => null)) || null;

  console.log(JSON.stringify(seen));
} catch (e) {
  console.error(String(e && e.stack || e));
  console.error(JSON.stringify({ seen }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
