// The storefront's waiting room in a real headless Chromium:
//   1. three buyers joined through the API are ahead; the page joins the
//      line (solving the proof of work with WebCrypto) and shows its place,
//   2. its turn comes: Buy, with the pass, reserves,
//   3. a second buyer's page waits behind the stock; once the others have
//      bought the last units it reads "Sold out" without a reload.
// usage: node queue.mjs PAGE_URL API_BASE ARTIFACTS_DIR
import { launch } from "./launch.mjs";
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";

const [pageUrl, apiBase, artifacts] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const step = (what) => console.log(`${new Date().toISOString()} ${what}`);
const json = async (url, init) => {
  const r = await fetch(url, { ...init, signal: AbortSignal.timeout(10000) });
  return { status: r.status, body: await r.json().catch(() => ({})) };
};
const zeroBits = (d) => { let b = 0; for (const x of d) { if (x === 0) { b += 8; continue; } return b + Math.clz32(x) - 24; } return b; };
const solve = (challenge, bits) => {
  for (let n = 0; ; n++) {
    if (zeroBits(createHash("sha256").update(`${challenge}:${n}`).digest()) >= bits) return String(n);
  }
};
const joinByApi = async () => {
  const c = (await json(`${apiBase}/queue/challenge`)).body;
  const r = await json(`${apiBase}/queue`, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ challenge: c.challenge, solution: solve(c.challenge, c.bits) }) });
  if (r.status !== 201) throw new Error(`join: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.ticket;
};

step("three buyers join through the API");
const ahead = [await joinByApi(), await joinByApi(), await joinByApi()];

step("launching chromium");
const browser = await launch();
let failed = false;
try {
  const phone = { viewport: { width: 390, height: 844 } };
  const page = await (await browser.newContext(phone)).newPage();
  page.setDefaultTimeout(15000);
  await page.goto(pageUrl, { timeout: 15000 });
  step("the page shows the waiting room");
  await page.locator("#queue").waitFor({ state: "visible" });
  await page.locator("#join").click();
  await page.waitForFunction(() => document.getElementById("queue-place").textContent === "#4");
  await page.screenshot({ path: `${artifacts}/queue-1-in-line.png`, fullPage: true });

  step("a second buyer joins behind");
  const other = await (await browser.newContext(phone)).newPage();
  other.setDefaultTimeout(15000);
  await other.goto(pageUrl, { timeout: 15000 });
  await other.locator("#join").click();
  await other.waitForFunction(() => document.getElementById("queue-place").textContent === "#5");

  step("the first page's turn comes: Buy");
  await page.waitForFunction(() => document.getElementById("queue-state").textContent.includes("your turn"));
  await page.waitForFunction(() => !document.getElementById("buy").disabled);
  await page.locator("#buy").click();
  await page.waitForFunction(() => document.getElementById("outcome").textContent.includes("Reserved"));
  await page.screenshot({ path: `${artifacts}/queue-2-bought.png`, fullPage: true });

  step("the three ahead buy the last units with their passes");
  for (const t of ahead) {
    let s;
    for (let i = 0; i < 100; i++) {
      s = (await json(`${apiBase}/queue/${t}`)).body;
      if (s.state === "admitted") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (s.state !== "admitted") throw new Error(`not admitted: ${JSON.stringify(s)}`);
    const r = await json(`${apiBase}/orders`, { method: "POST",
      headers: { "content-type": "application/json", Authorization: `Bearer ${s.pass}` }, body: JSON.stringify({ quantity: 1 }) });
    if (r.status !== 202) throw new Error(`buy: ${r.status} ${JSON.stringify(r.body)}`);
  }
  step("the second page reads sold out, without a reload");
  await other.waitForFunction(() => document.getElementById("queue-state").textContent.includes("Sold out"));
  await other.screenshot({ path: `${artifacts}/queue-3-sold-out.png`, fullPage: true });
  step("done");
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
