// The home-network setup walkthrough in real headless Chromium: the first admin through the
// setup link; the admin creates "alice" with an email, adds her to `admins`, sets her
// password; alice logs in and sees her portal; the admin creates an application with a launch
// URL and alice sees its tile; an application launched at blank://blank stays hidden.
// A screenshot of every admin page goes to SCREENSHOT_DIR.
// Usage: node admin.mjs SETUP_LINK SCREENSHOT_DIR. Prints one JSON line; exits non-zero on failure.
import { chromium } from 'playwright-core';
import path from 'node:path';

const [setupLink, shots] = process.argv.slice(2);
const base = new URL(setupLink).origin;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

function fail(message) {
  console.log(JSON.stringify({ ok: false, message }));
  process.exit(2);
}

let shotCount = 0;
async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${String(++shotCount).padStart(2, '0')}-${name}.png`), fullPage: true });
}

/// Submits the form holding `selector`'s button and waits for the page it leads to.
async function submit(page, button) {
  await Promise.all([page.waitForNavigation(), page.click(button)]);
}

async function expectOk(page, what) {
  const alert = await page.$('[role=alert]');
  if (alert) fail(`${what}: ${await alert.textContent()}`);
}

try {
  // 1. First admin through the setup link.
  const admin = await (await browser.newContext()).newPage();
  await admin.goto(setupLink);
  await admin.fill('input[name="email"]', 'admin@example.test');
  await admin.fill('input[name="password"]', 'Admin-Strong-Pass-1');
  await admin.fill('input[name="password_repeat"]', 'Admin-Strong-Pass-1');
  await Promise.all([admin.waitForURL('**/if/user/**'), admin.click('button[type="submit"]')]);
  if ((await admin.textContent('#username')) !== 'admin') fail('setup did not log in the admin');

  // The admin interface is reachable from the portal.
  await Promise.all([admin.waitForURL('**/if/admin/'), admin.click('text=Admin interface')]);
  await shot(admin, 'overview');

  // 2. Create alice with an email.
  await admin.goto(`${base}/if/admin/users/new/`);
  await shot(admin, 'user-new');
  await admin.fill('#f-username', 'alice');
  await admin.fill('#f-name', 'Alice Example');
  await admin.fill('#f-email', 'alice@example.test');
  await submit(admin, 'button:has-text("Create")');
  await expectOk(admin, 'create alice');
  if (!admin.url().includes('/if/admin/users/')) fail(`after creating alice: ${admin.url()}`);
  const alicePage = admin.url().split('?')[0];

  // Add her to admins, then set her password.
  await admin.selectOption('#f-group', 'admins');
  await submit(admin, 'button:has-text("Add")');
  await expectOk(admin, 'add alice to admins');
  await admin.fill('#f-password', 'Alice-Strong-Pass-1');
  await admin.fill('#f-password_repeat', 'Alice-Strong-Pass-1');
  await submit(admin, 'button:has-text("Set password")');
  await expectOk(admin, 'set alice password');
  await shot(admin, 'user-detail');

  // 3. Applications: one with a launch URL, one hidden with blank://blank.
  for (const [name, slug, url] of [['Wiki', 'wiki', 'https://wiki.example.test/'], ['Hidden Service', 'hidden-service', 'blank://blank']]) {
    await admin.goto(`${base}/if/admin/applications/new/`);
    await admin.fill('#f-name', name);
    await admin.fill('#f-slug', slug);
    await admin.fill('#f-launch_url', url);
    await admin.fill('#f-group', 'Home');
    await submit(admin, 'button:has-text("Create")');
    await expectOk(admin, `create application ${name}`);
  }
  await shot(admin, 'application-detail');

  // A proxy provider, served by the embedded outpost.
  await admin.goto(`${base}/if/admin/providers/new/proxy/`);
  await shot(admin, 'provider-new-proxy');
  await admin.fill('#f-name', 'Wiki forward auth');
  await admin.fill('#f-external_host', 'https://wiki.example.test');
  await submit(admin, 'button:has-text("Create")');
  await expectOk(admin, 'create proxy provider');
  await shot(admin, 'provider-detail');
  await admin.goto(`${base}/if/admin/outposts/`);
  await admin.check('input[name="providers"][value="Wiki forward auth"]');
  await submit(admin, 'button:has-text("Save")');
  await expectOk(admin, 'outpost');

  // Every other admin page, for the record.
  const pages = [
    ['users', '/if/admin/users/'], ['groups', '/if/admin/groups/'], ['applications', '/if/admin/applications/'],
    ['application-new', '/if/admin/applications/new/'], ['providers', '/if/admin/providers/'],
    ['provider-new-oauth2', '/if/admin/providers/new/oauth2/'], ['provider-new-ldap', '/if/admin/providers/new/ldap/'],
    ['outposts', '/if/admin/outposts/'], ['flows', '/if/admin/flows/'], ['policies', '/if/admin/policies/'],
    ['events', '/if/admin/events/'], ['settings', '/if/admin/settings/'], ['certificates', '/if/admin/certificates/'],
  ];
  for (const [name, url] of pages) {
    const response = await admin.goto(`${base}${url}`);
    if (response.status() !== 200) fail(`${url} answered ${response.status()}`);
    await shot(admin, name);
  }
  await admin.goto(`${base}/if/admin/groups/`);
  await Promise.all([admin.waitForNavigation(), admin.click('.tree a:has-text("admins")')]);
  await shot(admin, 'group-detail');

  // 4. Alice logs in (in her own browser) and sees her portal with the Wiki tile only.
  const alice = await (await browser.newContext()).newPage();
  await alice.goto(`${base}/if/user/`);
  if (!alice.url().includes('/if/flow/default-authentication-flow/')) fail(`alice was not sent to log in: ${alice.url()}`);
  await alice.fill('#uid_field', 'alice');
  await alice.fill('#password', 'Alice-Strong-Pass-1');
  await Promise.all([alice.waitForURL('**/if/user/'), alice.click('button[type="submit"]')]);
  const shown = await alice.textContent('#username');
  const tiles = await alice.$$eval('.tile .name', (els) => els.map((e) => e.textContent.trim()));
  const wikiHref = await alice.getAttribute('.tile[data-slug="wiki"] a', 'href');
  await alice.setViewportSize({ width: 375, height: 740 });
  await shot(alice, 'portal-phone');
  await alice.goto(`${base}/if/user/settings/`);
  await shot(alice, 'portal-settings-phone');
  // Alice is an admin now: the admin interface opens for her too.
  const adminForAlice = await alice.goto(`${base}/if/admin/`);

  const result = { shown, tiles, wikiHref, adminStatus: adminForAlice.status(), screenshots: shotCount };
  console.log(JSON.stringify(result));
  if (shown !== 'alice' || !tiles.includes('Wiki') || tiles.includes('Hidden Service')
      || wikiHref !== 'https://wiki.example.test/' || adminForAlice.status() !== 200) {
    process.exit(3);
  }
} finally {
  await browser.close();
}
