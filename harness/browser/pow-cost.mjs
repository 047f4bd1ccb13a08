// What the waiting room's proof of work costs a browser: SHA-256 per second
// through WebCrypto, as the storefront computes it, in Debian's headless
// Chromium as it is and slowed 4x (Lighthouse's mobile CPU throttling, a
// phone-class CPU). Prints the expected time per difficulty.
// usage: node pow-cost.mjs
import { launch } from "./launch.mjs";
import { createServer } from "node:http";

// WebCrypto needs a secure context: a page from 127.0.0.1 is one.
const server = createServer((_, res) => res.end("<!doctype html><title>pow</title>"));
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const url = `http://127.0.0.1:${server.address().port}/`;

const browser = await launch();
try {
  for (const slowdown of [1, 4]) {
    const page = await browser.newPage();
    await page.goto(url);
    if (slowdown > 1) {
      const cdp = await page.context().newCDPSession(page);
      await cdp.send("Emulation.setCPUThrottlingRate", { rate: slowdown });
    }
    const perSecond = await page.evaluate(async () => {
      const enc = new TextEncoder();
      const token = "x".repeat(150);
      let n = 0;
      const started = performance.now();
      while (performance.now() - started < 3000) {
        await crypto.subtle.digest("SHA-256", enc.encode(`${token}:${n}`));
        n++;
      }
      return n / ((performance.now() - started) / 1000);
    });
    const label = slowdown === 1 ? "headless Chromium on this machine" : `the same, CPU slowed ${slowdown}x (phone class)`;
    console.log(`${label}: ${Math.round(perSecond)} SHA-256/s`);
    for (const bits of [12, 16, 20]) {
      console.log(`  ${bits} bits: ${(2 ** bits / perSecond).toFixed(1)} s expected`);
    }
    await page.close();
  }
} finally {
  await browser.close();
  server.close();
}
