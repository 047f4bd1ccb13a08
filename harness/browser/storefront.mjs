// Drives the storefront page in a real headless Chromium (Debian's package,
// through playwright-core; no browser download):
//   1. the live counter shows the stock and moves when another client buys,
//   2. Buy shows "Reserved" with a pay-by countdown, and Pay confirms,
//   3. a sold-out sale disables the button.
// A screenshot of each state goes to the artifacts directory (kept out of git).
//
// With SIGNED_IN_AS set, every request carries X-Authenticated-User as a
// proxy that signs buyers in would add it: the page then asks for no name.
//
// usage: [SIGNED_IN_AS=buyer] node storefront.mjs PAGE_URL API_BASE ARTIFACTS_DIR STOCK
import { launch } from "./launch.mjs";
import { mkdirSync } from "node:fs";

const [pageUrl, apiBase, artifacts, stockArg] = process.argv.slice(2);
const stock = Number(stockArg);
const signedInAs = process.env.SIGNED_IN_AS || "";
const signedIn = (user) => (signedInAs ? { "X-Authenticated-User": user } : {});
mkdirSync(artifacts, { recursive: true });

// Every wait is bounded, and each step is logged first, so that a stuck
// step names itself in the test's failure message.
const step = (what) => console.log(`${new Date().toISOString()} ${what}`);
const within = (ms, what, promise) =>
  Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms).unref()),
  ]);

const buy = async (user) => {
  const r = await fetch(`${apiBase}/orders`, {
    method: "POST",
    headers: { "content-type": "application/json", ...signedIn(user) },
    body: JSON.stringify({ user, quantity: 1 }),
    signal: AbortSignal.timeout(10000),
  });
  return r.status;
};

step("launching chromium");
const browser = await launch();
let failed = false;
try {
  step("opening the page");
  const page = await within(30000, "a new page", browser.newPage({
    viewport: { width: 390, height: 844 }, // a phone
    extraHTTPHeaders: signedIn(signedInAs),
  }));
  page.setDefaultTimeout(10000);
  await page.goto(pageUrl, { timeout: 15000 });
  const remaining = page.locator("#remaining");
  await page.waitForFunction((n) => document.getElementById("remaining").textContent === String(n), stock, { timeout: 10000 });
  await page.screenshot({ path: `${artifacts}/1-open.png`, fullPage: true });

  step("another client buys");
  // Another client buys: the counter moves by itself.
  if ((await buy("someone-else")) !== 202) throw new Error("the other client's purchase failed");
  await page.waitForFunction((n) => document.getElementById("remaining").textContent === String(n), stock - 1, { timeout: 10000 });

  step("buying on the page");
  // Keyboard-only purchase through the labelled form.
  if (signedInAs) {
    if ((await page.locator("#user").isVisible()) || (await page.locator("#user-label").isVisible()))
      throw new Error("a signed-in buyer is asked for a name");
  } else {
    await page.getByLabel("Your e-mail or customer id").fill("browser@example.com");
  }
  await page.getByRole("button", { name: "Buy now" }).focus();
  await page.keyboard.press("Enter");
  await page.locator("#outcome").filter({ hasText: "Reserved" }).waitFor({ timeout: 10000 });
  const text = await page.locator("#outcome").textContent();
  if (!/pay within/.test(text)) throw new Error(`no pay-by countdown: ${text}`);
  await page.screenshot({ path: `${artifacts}/2-reserved.png`, fullPage: true });
  await page.getByRole("button", { name: "Pay now" }).click();
  await page.locator("#outcome").filter({ hasText: "confirmed" }).waitFor({ timeout: 10000 });

  step("selling the rest");
  // Sell the rest from elsewhere: the page shows sold out, the button is disabled.
  for (let i = 0; i < stock; i++) await buy(`rest-${i}`);
  await page.waitForFunction(() => document.getElementById("remaining").textContent === "0", null, { timeout: 10000 });
  const button = page.locator("#buy");
  await page.waitForFunction(() => document.getElementById("buy").disabled, null, { timeout: 10000 });
  const label = await button.textContent();
  if (label.trim() !== "Sold out") throw new Error(`button says ${label}`);
  const phase = await page.locator("#phase").textContent();
  if (phase.trim() !== "Sold out") throw new Error(`phase says ${phase}`);
  await page.screenshot({ path: `${artifacts}/3-sold-out.png`, fullPage: true });
  console.log(`storefront ok; remaining ${await remaining.textContent()}`);
} catch (e) {
  failed = true;
  console.error(`storefront test failed: ${e.stack || e}`);
} finally {
  step("closing chromium");
  await within(15000, "closing chromium", browser.close()).catch((e) => console.error(`${e}`));
}
process.exit(failed ? 1 : 0);
