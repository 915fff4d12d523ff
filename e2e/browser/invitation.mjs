// Drives real headless Chromium through an invitation link: the enrollment form, the login
// that follows, and the portal. Usage: node invitation.mjs INVITATION_URL USERNAME
// Prints one JSON line; exits non-zero on any failure.
import { chromium } from 'playwright-core';

const [url, username] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.fill('input[name="username"]', username);
  await page.fill('input[name="name"]', 'Browser Person');
  await page.fill('input[name="email"]', `${username}@example.test`);
  await page.fill('input[name="password"]', 'Browser-Strong-Pass-1');
  await page.fill('input[name="password_repeat"]', 'Browser-Strong-Pass-1');
  await Promise.all([page.waitForURL('**/if/user/**'), page.click('button[type="submit"]')]);
  const shown = await page.textContent('#username');
  // A second visit of the same link is refused: the invitation was single use.
  const again = await browser.newPage();
  const response = await again.goto(url);
  const refused = response.status() === 403 && (await again.content()).includes('invitation');
  console.log(JSON.stringify({ landed: page.url(), shown, refused }));
  if (shown !== username || !refused) process.exit(2);
} finally {
  await browser.close();
}
