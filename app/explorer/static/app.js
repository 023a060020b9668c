// MOSAIC explorer: plain modern JavaScript, no library, no network beyond this gateway's own API.
// Every text from the API is inserted with textContent (never as HTML).

const $ = (selector) => document.querySelector(selector);
const KEY_STORAGE = "mosaic.apiKey";

const state = {
  auction: null,      // the auction as shown: {auction_id, candidates, advertisers, ...}
  names: {},          // advertiser id -> name (for the "names her" flag)
  whatIf: null,       // the AbortController of the what-if in flight
};

// ---------------------------------------------------------------- the API

function headers() {
  const key = $("#api-key").value.trim();
  const result = { "Content-Type": "application/json" };
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

/** The API's own message for a failed answer: 422 lists "field: reason", others their detail. */
export function errorMessage(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return `HTTP ${status}: ` + detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("\n");
  }
  if (typeof detail === "string") return `HTTP ${status}: ${detail}`;
  return `HTTP ${status}`;
}

async function api(method, path, body, signal) {
  const response = await fetch(path, {
    method,
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) throw new Error(errorMessage(response.status, payload));
  return payload;
}

// ---------------------------------------------------------------- status and errors

function setStatus(stateName, text) {
  const element = $("#status");
  element.dataset.state = stateName;
  element.textContent = text;
}

function showError(message) {
  const element = $("#error");
  element.textContent = message;
  element.hidden = !message;
}

// ---------------------------------------------------------------- the form

let instances = [];

function advertiserRow(advertiser = {}) {
  const row = document.createElement("div");
  row.className = "advertiser";
  for (const [field, placeholder] of [["id", "id"], ["name", "Name"], ["description", "description"]]) {
    const input = document.createElement("input");
    input.dataset.field = field;
    input.placeholder = placeholder;
    input.value = advertiser[field] || "";
    row.append(input);
  }
  const scale = document.createElement("input");
  scale.dataset.field = "value_scale";
  scale.type = "number";
  scale.step = "any";
  scale.min = "0";
  scale.title = "value scale s_i";
  scale.value = advertiser.value_scale ?? 1;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.title = "remove";
  remove.addEventListener("click", () => row.remove());
  row.append(scale, remove);
  return row;
}

function fill(instance) {
  $("#query").value = instance.query;
  const list = $("#advertisers");
  list.replaceChildren(...instance.advertisers.map((a) => advertiserRow(a)));
}

function optionalNumber(selector, parse) {
  const text = $(selector).value.trim();
  return text === "" ? undefined : parse(text);
}

function requestBody() {
  const advertisers = [...document.querySelectorAll("#advertisers .advertiser")].map((row) => {
    const value = (field) => row.querySelector(`[data-field="${field}"]`).value.trim();
    const advertiser = { id: value("id"), name: value("name"), description: value("description") };
    const scale = value("value_scale");
    if (scale !== "" && Number(scale) !== 1) advertiser.value_scale = Number(scale);
    return advertiser;
  });
  const body = { query: $("#query").value.trim(), advertisers, proposal: $("#proposal").value };
  if ($("#use-select").checked) {  // the service chooses the campaigns: the form's advertisers stay out
    body.advertisers = [];
    body.select = { max: Number.parseInt($("#select-max").value, 10) || 1 };
  }
  const numbers = [
    ["candidates", "#candidates", (t) => Number.parseInt(t, 10)],
    ["tau", "#tau", Number],
    ["seed", "#seed", (t) => Number.parseInt(t, 10)],
    ["max_tokens", "#max-tokens", (t) => Number.parseInt(t, 10)],
  ];
  for (const [field, selector, parse] of numbers) {
    const value = optionalNumber(selector, parse);
    if (value !== undefined) body[field] = value;
  }
  body.include_candidates = true;
  return body;
}

// ---------------------------------------------------------------- rendering

const fmt = (x, digits = 4) => (Number.isFinite(x) ? x.toFixed(digits) : String(x));

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function namesHer(text, name) {
  return Boolean(name) && text.toLowerCase().includes(name.toLowerCase());
}

/** A sealed answer (an advertiser key: `view: "sealed"`) holds her own row only; a full one every row. */
function advertiserRows(answer) {
  return answer.view === "sealed" ? [answer.advertiser] : answer.advertisers;
}

function renderAdvertisers(rows) {
  const body = $("#advertiser-table tbody");
  body.replaceChildren(
    ...rows.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.advertiser = row.id;
      tr.append(cell(row.id, "text"), cell(fmt(row.payment, 6)), cell(fmt(row.expected_reward, 6)),
        cell(fmt(row.expected_utility, 6)));
      return tr;
    }),
  );
}

function renderSummary(tau, ess, revenue) {
  const auction = state.auction;
  // A sealed view has no revenue (with two advertisers it would be the other's payment).
  const money = revenue === undefined ? "" : ` · revenue = ${fmt(revenue, 6)} ${auction.currency}`;
  $("#summary").textContent =
    `τ = ${tau} · ESS = ${fmt(ess, 3)} of M = ${auction.candidates.length}${money} · ` +
    `proposal = ${auction.proposal} · seed = ${auction.seed}`;
  $("#result").dataset.tau = String(tau);
}

function renderView(auction) {
  const note = $("#view-note");
  const sealed = auction.view === "sealed";
  note.hidden = !sealed;
  note.textContent = sealed
    ? `Sealed view of advertiser ${auction.advertiser.id}: her own figures; the other advertisers ` +
      "only as the sum of their rewards on each candidate."
    : "";
  $("#result").dataset.view = sealed ? "sealed" : "full";
}

// Why a reply is not sponsored, by the disclosure's `metadata.reason`.
const NOT_SPONSORED = {
  test: "test auction: never billed",
  no_fill: "no-fill: nobody bid",
  nobody_charged: "nobody was charged a micro-unit",
};

/** The disclosure above the reply: its label as is (what an integrator shows the user), or why the
 * reply is not sponsored. Text only (textContent): a sponsor's name is never markup. */
function renderDisclosure(disclosure) {
  const line = $("#disclosure");
  line.dataset.sponsored = String(Boolean(disclosure && disclosure.sponsored));
  if (disclosure && disclosure.label) {
    line.textContent = disclosure.label;
  } else {
    const reasons = disclosure ? [NOT_SPONSORED[disclosure.metadata.reason]] : [];
    if (disclosure && disclosure.metadata.advertisers_in_prompt) reasons.push("drawn under the advertisers' prompt");
    line.textContent = `Not sponsored${reasons.length ? ` (${reasons.join("; ")})` : ""}`;
  }
  line.title = disclosure ? `rule: ${disclosure.metadata.basis}; why: ${disclosure.metadata.parameters}` : "";
}

/** Which campaigns a `select` auction considered, their relevance and why each was left out; and a
 * no-fill's reason (nobody bid: one organic reply, nothing billed). */
function renderSelection(auction) {
  const report = auction.selection;
  const noFill = auction.no_fill;
  $("#selection").hidden = !report && !noFill;
  const sensitive = report && report.sensitive ? ` · sensitive topic: ${report.sensitive.category}` : "";
  const timing = report ? ` · embedding ${fmt(report.embedding_ms, 1)} ms, selection ${fmt(report.selection_ms, 2)} ms` : "";
  $("#selection-note").textContent = (noFill ? `no-fill: ${noFill.reason} (${noFill.detail})` : "") + sensitive + timing;
  $("#selection-table tbody").replaceChildren(
    ...((report && report.considered) || []).map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.campaign = c.campaign_id;
      tr.dataset.selected = String(c.selected);
      tr.append(cell(c.campaign_id, "text"), cell(c.owner, "text"), cell(fmt(c.relevance, 3)),
        cell(c.keyword_match ? "yes" : "", "text"), cell(c.selected ? "yes" : "", "text"),
        cell(c.reason || "", "text"));
      return tr;
    }),
  );
}

function renderTimings(timings) {
  $("#timings").hidden = !timings;
  if (!timings) return;  // a sealed view has no stage timings
  const stages = Object.keys(timings);
  $("#timings-table thead tr").replaceChildren(...stages.map((s) => {
    const th = document.createElement("th");
    th.textContent = s;
    return th;
  }));
  $("#timings-table tbody tr").replaceChildren(...stages.map((s) => cell(fmt(timings[s], 1))));
}

/** Her reward (sealed) or advertiser id's (full) on a candidate. */
function reward(candidate, id) {
  return state.auction.view === "sealed" ? candidate.reward : candidate.rewards[id];
}

function renderCandidates(probabilities) {
  const auction = state.auction;
  const sealed = auction.view === "sealed";
  const ids = advertiserRows(auction).map((a) => a.id);
  const head = document.createElement("tr");
  for (const title of ["#", "π (probability)", "log π_ref", "log q", ...ids.map((id) => `r: ${id}`),
    ...(sealed ? ["Σ r: others"] : []), ...ids.map((id) => `names ${state.names[id] || id}`), "text"]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.append(th);
  }
  $("#candidate-table thead").replaceChildren(head);
  const order = probabilities.map((p, j) => j).sort((a, b) => probabilities[b] - probabilities[a] || a - b);
  const top = Math.max(...probabilities);
  const rows = order.map((j) => {
    const candidate = auction.candidates[j];
    const tr = document.createElement("tr");
    tr.dataset.index = String(j);
    tr.dataset.probability = String(probabilities[j]);
    if (j === auction.chosen_index) tr.className = "chosen";
    const prob = document.createElement("td");
    prob.className = "prob";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${top > 0 ? (6 * probabilities[j]) / top : 0}rem`;
    prob.append(bar, document.createTextNode(fmt(probabilities[j], 4)));
    tr.append(cell(String(j)), prob, cell(fmt(candidate.log_ref, 2)), cell(fmt(candidate.log_proposal, 2)));
    for (const id of ids) tr.append(cell(fmt(reward(candidate, id), 3)));
    if (sealed) tr.append(cell(fmt(candidate.others_reward, 3), "others"));
    for (const id of ids) tr.append(cell(namesHer(candidate.text, state.names[id]) ? "✓" : "", "names"));
    tr.append(cell(candidate.text, "text"));
    return tr;
  });
  $("#candidate-table tbody").replaceChildren(...rows);
}

function sliderFor(tau) {
  const slider = $("#tau-slider");
  slider.value = String(Math.min(2, Math.max(-2, Math.log10(tau))));
  $("#tau-value").textContent = String(tau);
}

/** Show an auction (a POST /auction answer with candidates, or a GET /auctions/{id} record: the full
 * record for a platform key, her sealed view for an advertiser key). */
function showAuction(auction, advertisersIn) {
  auction.candidates = auction.candidates || [];  // a no-fill scored nothing: no table
  state.auction = auction;
  state.names = Object.fromEntries(advertisersIn.map((a) => [a.id, a.name]));
  $("#auction-id").textContent = auction.auction_id;
  $("#reply").textContent = auction.reply;
  renderDisclosure(auction.disclosure);
  renderView(auction);
  renderSummary(auction.tau, auction.effective_sample_size, auction.revenue);
  renderAdvertisers(advertiserRows(auction));
  renderSelection(auction);
  renderTimings(auction.timings_ms);
  renderCandidates(auction.candidates.map((c) => c.probability));
  sliderFor(auction.tau);
  $("#result").hidden = false;
  $("#open-id").value = auction.auction_id;
  history.replaceState(null, "", `#auction=${auction.auction_id}`);
}

/** GET /auctions/{id}/why: each sponsor's reason (selected for the query, or listed by the caller),
 * τ, M and the proposal; the figures of everyone (platform key) or hers alone (advertiser key). A
 * failure here leaves the auction shown and says so in the note. */
async function loadWhy(auctionId) {
  const panel = $("#why");
  let why;
  try {
    why = await api("GET", `/auctions/${encodeURIComponent(auctionId)}/why`);
  } catch (error) {
    panel.hidden = false;
    $("#why-note").textContent = `unavailable: ${error.message}`;
    $("#why-table tbody").replaceChildren();
    return;
  }
  panel.hidden = !why.sponsored;
  panel.dataset.auction = auctionId;
  const others = why.other_sponsors ? ` · ${why.other_sponsors} other sponsor(s), not named in a sealed view` : "";
  $("#why-note").textContent =
    `τ ${fmt(why.tau, 3)} (${why.tau_basis}) · M ${why.candidates} · proposal ${why.proposal}${others}`;
  $("#why-table tbody").replaceChildren(...why.sponsors.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.sponsor = s.id;
    tr.dataset.basis = s.basis;
    const figures = s.figures || {};
    const share = figures.reward_share === null || figures.reward_share === undefined
      ? "" : `${fmt(100 * figures.reward_share, 1)} %`;
    tr.append(cell(`${s.name} (${s.id})`, "text"), cell(s.reason, "text"),
      cell(figures.paced_value_scale === undefined ? "" : fmt(figures.paced_value_scale, 4)), cell(share));
    return tr;
  }));
}

// ---------------------------------------------------------------- actions

async function runAuction(event) {
  event.preventDefault();
  showError("");
  const body = requestBody();
  setStatus("running", "running the auction…");
  $("#run").disabled = true;
  try {
    const auction = await api("POST", "/auction", body);
    showAuction(auction, body.advertisers);
    await loadWhy(auction.auction_id);
    setStatus("done", `auction ${auction.auction_id} served`);
  } catch (error) {
    setStatus("error", "failed");
    showError(error.message);
  } finally {
    $("#run").disabled = false;
  }
}

async function openAuction(auctionId) {
  showError("");
  setStatus("running", `opening ${auctionId}…`);
  try {
    const record = await api("GET", `/auctions/${encodeURIComponent(auctionId)}`);
    const entries = record.view === "sealed" ? [record.request.advertiser] : record.request.advertisers;
    showAuction(record, entries);
    await loadWhy(record.auction_id);
    setStatus("done", `auction ${record.auction_id} opened`);
  } catch (error) {
    setStatus("error", "failed");
    showError(error.message);
  }
}

async function whatIf() {
  const auction = state.auction;
  if (!auction) return;
  const tau = Number((10 ** Number($("#tau-slider").value)).toPrecision(3));
  $("#tau-value").textContent = String(tau);
  state.whatIf?.abort();
  const controller = new AbortController();
  state.whatIf = controller;
  setStatus("resolving", `what-if τ = ${tau}…`);
  try {
    const result = await api("POST", `/auctions/${auction.auction_id}/resolve`, { tau }, controller.signal);
    if (controller.signal.aborted) return;
    renderCandidates(result.probabilities);
    renderAdvertisers(advertiserRows(result));
    renderSummary(result.tau, result.effective_sample_size, result.revenue);
    showError("");
    setStatus("resolved", `what-if τ = ${result.tau} (not billed)`);
  } catch (error) {
    if (error.name === "AbortError") return;
    setStatus("error", "what-if failed");
    showError(error.message);
  }
}

// ---------------------------------------------------------------- what to bid

// The value scales of the curve: 1-2-5 steps from 0.001 to 1000 (the API's default) and hers.
const BID_SCALES = [-3, -2, -1, 0, 1, 2].flatMap((e) => [1, 2, 5].map((m) => Number((m * 10 ** e).toPrecision(1))))
  .concat([1000]);

function svg(name, attributes, text) {
  const element = document.createElementNS($("#bid-plot").namespaceURI, name);  // SVG's namespace
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

/** Cost per 1,000 against value scale, both axes logarithmic (points that cost nothing sit on the
 * floor); the target as a dashed line and the solved value scale as a red point. */
function plotBid(result, targetUnits) {
  const plot = $("#bid-plot");
  const [width, height, left, right, top, bottom] = [640, 300, 64, 16, 14, 40];
  const points = result.curve.filter((p) => p.value_scale > 0);
  const costs = points.map((p) => p.cost_per_1000).filter((c) => c > 0);
  if (targetUnits) costs.push(targetUnits);
  const yMax = Math.log10(Math.max(...costs, 1e-6));
  const yMin = Math.min(yMax - 1, Math.log10(Math.max(Math.min(...costs, 1e-6), 10 ** yMax * 1e-9)));
  const xMin = Math.log10(points[0].value_scale);
  const xMax = Math.log10(points[points.length - 1].value_scale);
  const x = (s) => left + ((Math.log10(s) - xMin) / Math.max(xMax - xMin, 1e-9)) * (width - left - right);
  const y = (c) => height - bottom - ((Math.log10(Math.max(c, 10 ** yMin)) - yMin) / (yMax - yMin)) * (height - top - bottom);
  const children = [];
  for (let e = Math.ceil(xMin); e <= Math.floor(xMax); e += 1) {
    children.push(svg("line", { class: "grid-line", x1: x(10 ** e), x2: x(10 ** e), y1: top, y2: height - bottom }));
    children.push(svg("text", { x: x(10 ** e), y: height - bottom + 16, "text-anchor": "middle" }, `${10 ** e}`));
  }
  for (let e = Math.ceil(yMin); e <= Math.floor(yMax); e += Math.max(1, Math.ceil((yMax - yMin) / 6))) {
    children.push(svg("line", { class: "grid-line", x1: left, x2: width - right, y1: y(10 ** e), y2: y(10 ** e) }));
    children.push(svg("text", { x: left - 6, y: y(10 ** e) + 4, "text-anchor": "end" }, `${10 ** e}`));
  }
  children.push(svg("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  children.push(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }));
  children.push(svg("text", { x: (left + width) / 2, y: height - 6, "text-anchor": "middle" }, "value scale (log)"));
  children.push(svg("text", { x: 12, y: top + 8 }, `${result.currency} / 1,000`));
  children.push(svg("polyline", { class: "curve", points: points.map((p) => `${x(p.value_scale)},${y(p.cost_per_1000)}`).join(" ") }));
  for (const p of points) {
    const circle = svg("circle", { class: "point", cx: x(p.value_scale), cy: y(p.cost_per_1000), r: 3 });
    circle.dataset.valueScale = String(p.value_scale);
    circle.dataset.cost = String(p.cost_per_1000);
    circle.append(svg("title", {}, `s = ${p.value_scale}: ${fmt(p.cost_per_1000, 2)} ${result.currency} per 1,000`));
    children.push(circle);
  }
  if (targetUnits) {
    children.push(svg("line", { class: "target", x1: left, x2: width - right, y1: y(targetUnits), y2: y(targetUnits) }));
  }
  if (result.target && result.target.reached) {
    const solution = svg("circle", { id: "bid-solution", class: "solution", cx: x(result.target.value_scale),
      cy: y(result.target.cost_per_1000_micro / 1e6), r: 5 });
    solution.dataset.valueScale = String(result.target.value_scale);
    children.push(solution);
  }
  plot.replaceChildren(...children);
}

function renderBid(result, ownScale, targetUnits, auctionIds) {
  const own = result.curve.find((p) => p.value_scale === ownScale);
  const currency = result.currency;
  const parts = [`Over ${result.auctions} test auctions (never billed, proposal ${result.proposals.join(", ")}):`];
  if (own) parts.push(`at her value scale ${ownScale}, ${fmt(own.cost_per_1000, 2)} ${currency} per 1,000 auctions.`);
  const target = result.target;
  if (target && target.reached) {
    parts.push(`For ${fmt(targetUnits, 2)} ${currency} per 1,000: value scale ${Number(target.value_scale.toPrecision(4))}.`);
  } else if (target) {
    parts.push(`${fmt(targetUnits, 2)} ${currency} per 1,000 is out of reach: even value scale ` +
      `${target.value_scale} costs ${fmt(target.cost_per_1000_micro / 1e6, 2)}.`);
  }
  $("#bid-summary").textContent = parts.join(" ");
  $("#bid-advertiser").textContent = result.advertiser;
  $("#bid-table tbody").replaceChildren(...result.curve.map((p) => {
    const tr = document.createElement("tr");
    if (p.value_scale === ownScale) tr.className = "own";
    tr.append(cell(String(p.value_scale)), cell(fmt(p.cost_per_auction, 6)), cell(fmt(p.cost_per_1000, 2)));
    return tr;
  }));
  plotBid(result, targetUnits);
  const panel = $("#bid");
  panel.dataset.auctions = auctionIds.join(",");
  panel.dataset.valueScale = target && target.reached ? String(target.value_scale) : "";
  panel.hidden = false;
}

/** The form's query first, then the paper's others, `count` in all. */
function bidQueries(count) {
  const first = $("#query").value.trim();
  const others = instances.map((instance) => instance.query).filter((query) => query !== first);
  return [first, ...others].filter(Boolean).slice(0, count);
}

async function estimateBid(event) {
  event.preventDefault();
  showError("");
  const base = requestBody();
  const advertiser = base.advertisers[0];
  const ownScale = advertiser ? (advertiser.value_scale ?? 1) : 1;
  const targetUnits = optionalNumber("#bid-target", Number);
  const queries = bidQueries(Math.max(1, Number.parseInt($("#bid-queries").value, 10) || 3));
  $("#bid-run").disabled = true;
  try {
    if (!advertiser) throw new Error("add an advertiser to the form first");
    const tables = [];
    const ids = [];
    for (const [index, query] of queries.entries()) {
      setStatus("calibrating", `test auction ${index + 1} of ${queries.length} (never billed)…`);
      const body = { ...base, query, advertisers: [advertiser], test: true, include_candidates: true };
      if (body.seed !== undefined) body.seed += index;
      const auction = await api("POST", "/auction", body);
      ids.push(auction.auction_id);
      tables.push({ tau: auction.tau, value_scale: ownScale, candidates: auction.candidates });
    }
    setStatus("calibrating", "computing the cost curve…");
    const request = { advertiser: advertiser.id, auctions: tables,
      value_scales: [...new Set([...BID_SCALES, ownScale])].sort((a, b) => a - b) };
    if (targetUnits) request.target_cpm_micro = Math.max(1, Math.round(targetUnits * 1e6));
    const result = await api("POST", "/calibration", request);
    renderBid(result, ownScale, targetUnits, ids);
    setStatus("calibrated", `cost curve of ${advertiser.id} over ${ids.length} test auctions`);
  } catch (error) {
    setStatus("error", "what to bid failed");
    showError(error.message);
  } finally {
    $("#bid-run").disabled = false;
  }
}

async function start() {
  const keyInput = $("#api-key");
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, keyInput.value));
  $("#key-form").addEventListener("submit", (event) => event.preventDefault());
  $("#auction-form").addEventListener("submit", runAuction);
  $("#open-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openAuction($("#open-id").value.trim());
  });
  $("#bid-form").addEventListener("submit", estimateBid);
  $("#add-advertiser").addEventListener("click", () => $("#advertisers").append(advertiserRow()));
  $("#tau-slider").addEventListener("input", whatIf);
  try {
    instances = (await (await fetch("/explorer/instances.json")).json()).instances;
  } catch {
    instances = [];
  }
  const select = $("#instance");
  select.replaceChildren(...instances.map((instance, index) => {
    const option = document.createElement("option");
    option.value = String(index);
    option.textContent = `${instance.id}. ${instance.query}`;
    return option;
  }));
  select.addEventListener("change", () => fill(instances[Number(select.value)]));
  if (instances.length) fill(instances[0]);
  const match = /^#auction=([A-Za-z0-9]{1,64})$/.exec(location.hash);
  if (match) await openAuction(match[1]);
  document.body.dataset.ready = "true";
}

start();
