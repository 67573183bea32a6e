// Drives the dashboard page in Debian's Chromium:
//   node dashboard.mjs <base url> <token> <incident title> [screenshot directory [admin token]]
// Signs in with the token, checks the summary is shown, prints
// "signed-in", then waits until an incident with the given title appears
// (opened by the caller after reading "signed-in"), prints "updated".
import { chromium } from "playwright-core";

const [base, token, title, shots, adminToken] = process.argv.slice(2);
const shot = async (page, name) => { if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true }); };
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

// Over HTTPS, the test's server key (its certificate is from the test's own CA).
const trusted = process.env.TRUSTED_SPKI ? [`--ignore-certificate-errors-spki-list=${process.env.TRUSTED_SPKI}`] : [];
const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ...trusted,
  ],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error(`page: ${m.text()}`); });
  await page.goto(base + "/");
  await page.fill("#token", token);
  await page.click("#signin-button");
  await page.waitForSelector("#board:not([hidden])", { timeout: 15000 });
  // The summary is filled in from the API (a number, not the placeholder).
  await page.waitForFunction(() => /^\d+$/.test(document.getElementById("active-sessions").textContent), null, { timeout: 15000 });
  await page.waitForFunction(() => document.getElementById("live-status").textContent === "live", null, { timeout: 15000 });
  const sessions = await page.textContent("#active-sessions");
  console.log(`signed-in sessions=${sessions}`);
  await page.waitForFunction(
    (wanted) => [...document.querySelectorAll("#incidents li .title")].some((n) => n.textContent === wanted),
    title,
    { timeout: 20000 },
  );
  const open = await page.textContent("#open-incidents-count");
  // The charts are drawn (uPlot, served by the query service), and the
  // incident chart counts the new incident.
  await page.waitForFunction(() => document.querySelectorAll("#charts .uplot").length === 4, null, { timeout: 15000 });
  await page.waitForFunction(() => document.getElementById("chart-incidents-total").textContent === "(1)", null, { timeout: 15000 });
  await shot(page, "dashboard");
  console.log(`updated open=${open}`);

  // The views of the dashboard test (given a screenshot directory; the
  // first-run test stops here): details, phone width, search, audit.
  if (shots) {
    // The detail views: an incident's timeline, an execution's steps (by
    // mouse), a conversation's messages (by keyboard: focus and Enter).
    const detail = async (kind, min) => {
      await page.waitForFunction(
        ([k, n]) => document.getElementById("detail").dataset.kind === k
          && document.querySelectorAll("#detail-items li").length >= n,
        [kind, min], { timeout: 15000 });
      return page.$$eval("#detail-items li", (l) => l.length);
    };
    await page.click(`#incidents li button:has-text("${title}")`);
    const timeline = await detail("incident", 1);
    await shot(page, "incident");
    await page.click("#executions li button");
    const steps = await detail("execution", 1);
    await shot(page, "execution");
    await page.focus("#conversations li button");
    await page.keyboard.press("Enter");
    const messages = await detail("conversation", 2);
    await shot(page, "conversation");
    await page.keyboard.press("Escape");
    await page.waitForSelector("#detail", { state: "hidden", timeout: 5000 });
    // Phone width: nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await shot(page, "phone");
    console.log(`details incident=${timeline > 0} execution=${steps} conversation=${messages} phone-overflow=${overflow > 1}`);
    await page.setViewportSize({ width: 1280, height: 900 });

    // Search over the caller's own conversations (embedded by the vector
    // projection, which may still be catching up: searched until found).
    await page.selectOption("#search-collection", "conversations");
    await page.fill("#search-query", "disk full");
    let own = false;
    for (let i = 0; i < 40 && !own; i++) {
      await page.click("#search-form button");
      await page.waitForTimeout(500);
      own = await page.$$eval("#search-results li", (l) => l.some((n) => n.textContent.includes("the disk is full")));
    }
    await shot(page, "search");

    // The audit log, for an admin: filtered to incidents.
    let filtered = false, lagChart = false;
    if (adminToken) {
      await page.click("#signout");
      // Nothing of the last user stays on the page.
      const left = await page.$$eval("#search-results li, #conversations li, #detail-items li", (l) => l.length);
      if (left !== 0) throw new Error(`${left} entries of the signed-out user are still shown`);
      await page.fill("#token", adminToken);
      await page.click("#signin-button");
      await page.waitForSelector("#audit:not([hidden])", { timeout: 15000 });
      await page.selectOption("#audit-resource", "incident");
      await page.click("#audit-form button");
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll("#audit-rows tr")];
        return rows.length > 0 && rows.every((r) => r.children[3] && r.children[3].textContent.startsWith("incident "));
      }, null, { timeout: 15000 });
      filtered = true;
      await shot(page, "audit");
      // The lag chart draws each SQL projection's longest delay per hour
      // (figures written while the test ran).
      await page.waitForFunction(() => {
        const legend = [...document.querySelectorAll("#chart-lag .u-legend th")].map((n) => n.textContent);
        return legend.some((t) => t.includes("relational")) && legend.some((t) => t.includes("audit"))
          && /^\(longest \d+\.\d{3} s\)$/.test(document.getElementById("chart-lag-total").textContent);
      }, null, { timeout: 15000 });
      lagChart = true;
      await page.locator("#charts").screenshot({ path: `${shots}/charts.png` });
    }
    console.log(`searched own-message=${own} audit-filtered=${filtered} lag-chart=${lagChart}`);
  }
} finally {
  await browser.close();
}
