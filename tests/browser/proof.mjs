// Loads a page through tamis in headless Chromium and reports, as JSON on stdout, every
// request the browser made, whether the map's tiles and the web font loaded, and saves a
// screenshot. Usage: node proof.mjs PAGE_URL SCREENSHOT_PATH
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // No background traffic: this machine has no network, and none may leave it.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  // A French visitor: the Accept-Language tamis must strip.
  const context = await browser.newContext({ locale: 'fr-FR' });
  const page = await context.newPage();
  const requests = [];
  const failed = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('requestfailed', (r) => failed.push(`${r.url()} ${r.failure()?.errorText}`));
  await page.goto(url, { waitUntil: 'load', timeout: 20000 });
  await page.waitForFunction(() => window.tamisProof && window.tamisProof.tiles >= 4, null, { timeout: 20000 });
  const result = await page.evaluate(async () => {
    const loaded = await document.fonts.load("400 22px 'Roboto'", 'Fonts');
    await document.fonts.ready;
    return {
      tiles: window.tamisProof.tiles,
      tileErrors: window.tamisProof.tileErrors,
      fontFaces: [...document.fonts].map((f) => `${f.family}:${f.status}`),
      fontLoaded: loaded.some((f) => f.family.includes('Roboto') && f.status === 'loaded'),
      headingFont: getComputedStyle(document.querySelector('h1')).fontFamily,
    };
  });
  await page.waitForTimeout(300);
  await page.screenshot({ path: screenshot });
  console.log(JSON.stringify({ ...result, requests, failed }));
} finally {
  await browser.close();
}
