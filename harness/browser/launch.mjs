// Debian's Chromium, headless, as every browser test starts it (through
// playwright-core; no browser download).
import { chromium } from "playwright-core";

export const launch = () =>
  chromium.launch({
    timeout: 30000,
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
