// Loads a page through tamis in headless Chromium, with `evil.test` resolving to loopback so a
// third party has a name, waits for late requests (CSP reports), and prints as JSON every
// request the page made. Usage: node hostile.mjs PAGE_URL
import { chromium } from 'playwright-core';

const [url] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--host-resolver-rules=MAP evil.test 127.0.0.1'],
});
try {
  const page = await browser.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(url, { waitUntil: 'load', timeout: 20000 });
  await page.waitForTimeout(1500);
  const mode = await page.evaluate(() => document.compatMode);
  console.log(JSON.stringify({ requests, mode }));
} finally {
  await browser.close();
}
