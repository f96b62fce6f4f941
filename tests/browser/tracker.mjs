// Loads a page whose real tracker script posts through tamis; reports every request the browser
// made as JSON on stdout. Usage: node tracker.mjs PAGE_URL
import { chromium } from 'playwright-core';

const [url] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ locale: 'fr-FR' });
  const page = await context.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(url, { waitUntil: 'load', timeout: 20000 });
  await page.waitForFunction(() => window.tamisSent === true, null, { timeout: 20000 });
  console.log(JSON.stringify({ requests }));
} finally {
  await browser.close();
}
