// gencli explore: the page over gencli serve's routes (/v1/generate, /v1/tokenize, /v1/attention,
// /v1/explain, /v1/compare). Plain JavaScript and SVG; nothing is fetched from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const TOP_ALTERNATIVES = 5;

// What the page shows, kept for scripts and tests to read: window.explore.
const state = {
  ids: [],            // the whole sequence: prompt, then generated tokens
  promptLength: 0,
  steps: [],          // per generated token: its logprob record
  passes: [],         // per generated token: {accepted, refused} where a verification pass gave it
  cacheHistory: [],   // per cache snapshot: positions held
  attention: null,    // the last /v1/attention answer
  explanation: null,  // the last /v1/explain answer
  running: null,      // the AbortController of the generation in flight
};
window.explore = state;

let apiKey = sessionStorage.getItem("gencli-api-key");

async function api(path, body, signal) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body), signal });
  if (response.status === 401 && !signal) {
    const key = window.prompt("This server needs its API key:");
    if (key) {
      apiKey = key;
      sessionStorage.setItem("gencli-api-key", key);
      return api(path, body, signal);
    }
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (ignored) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

function settings() {
  const number = (id) => $(id).value === "" ? null : Number($(id).value);
  const temperature = number("temperature") ?? 0;
  const body = {
    mode: $("mode").value,
    max_new_tokens: number("max-tokens") ?? 24,
    sample: temperature > 0,
    top_k: number("top-k") ?? 0,
    top_p: number("top-p") ?? 1,
  };
  if (temperature > 0) body.temperature = temperature;
  if (number("seed") !== null) body.seed = number("seed");
  // Left empty, the server's own (the CLI's preset: 1.2 and 3, which ban what prompt lookup copies).
  if (number("repetition-penalty") !== null) body.repetition_penalty = number("repetition-penalty");
  if (number("no-repeat-ngram") !== null) body.no_repeat_ngram_size = number("no-repeat-ngram");
  const shape = $("shape").value;
  const shapeText = $("shape-text").value.trim();
  if (shape === "choice") body.choice = shapeText.split("|").map((part) => part.trim()).filter(Boolean);
  else if (shape === "json_object") body.json_object = true;
  else if (shape) body[shape] = shapeText;  // regex, or the schema's JSON text
  if ($("speculate").value !== "none") body.speculate = $("speculate").value;
  return body;
}

// What a token looks like in the strip: a newline, a tab or a return would be a blank sliver.
function visible(text) {
  return text.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/\r/g, "␍");
}

// ---- Tokens -------------------------------------------------------------------------------

function probabilityColour(logprob) {
  // Red (p below about 0.001) through yellow (about 0.03) to green (1), on the log scale: a
  // language model's probabilities spread over orders of magnitude.
  const share = Math.max(0, 1 + logprob / 7);
  return `hsla(${Math.round(120 * share)}, 75%, 50%, 0.35)`;
}

function addToken(text, index, step) {
  const span = document.createElement("span");
  span.className = step ? "token" : "token prompt";
  span.tabIndex = 0;
  span.dataset.index = index;
  span.textContent = visible(text);
  if (step && step.allowed !== undefined) span.dataset.allowed = step.allowed;
  if (step) {
    const probability = Math.exp(step.logprob);
    span.style.background = probabilityColour(step.logprob);
    span.dataset.probability = probability.toFixed(4);
    span.setAttribute("aria-label", `${JSON.stringify(text)}, probability ${probability.toFixed(3)}`);
  }
  span.addEventListener("mouseenter", () => showAlternatives(span));
  span.addEventListener("focus", () => showAlternatives(span));
  span.addEventListener("mouseleave", hideAlternatives);
  span.addEventListener("blur", hideAlternatives);
  span.addEventListener("click", () => explainPosition(index));
  span.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); explainPosition(index); }
  });
  $("tokens").appendChild(span);
}

function showAlternatives(span) {
  const index = Number(span.dataset.index);
  const box = $("alternatives");
  const step = state.steps[index - state.promptLength];
  box.replaceChildren();
  if (!step) {
    box.textContent = `prompt token ${index}: ${JSON.stringify(span.textContent)} (id ${state.ids[index]})`;
  } else {
    const title = document.createElement("div");
    title.textContent = `token ${index}: chosen with p = ${Math.exp(step.logprob).toFixed(4)}`;
    const table = document.createElement("table");
    // With a shape, the model's own most likely tokens, those the shape ruled out greyed.
    const shaped = step.unshaped !== undefined;
    if (shaped) title.textContent += ` · the shape allowed ${step.allowed} tokens; the model's own choices:`;
    for (const alternative of shaped ? step.unshaped : step.top) {
      const row = table.insertRow();
      row.className = shaped && !alternative.allowed ? "alternative disallowed" : "alternative";
      row.insertCell().textContent = JSON.stringify(alternative.text);
      row.insertCell().textContent = Math.exp(alternative.logprob).toFixed(4);
      if (shaped) row.insertCell().textContent = alternative.allowed ? "allowed" : "ruled out";
    }
    box.append(title, table);
    const verified = state.passes[index - state.promptLength];
    if (verified) box.append(passNote(verified));
  }
  const rect = span.getBoundingClientRect();
  box.style.left = `${rect.left + window.scrollX}px`;
  box.style.top = `${rect.bottom + window.scrollY + 4}px`;
  box.hidden = false;
}

function hideAlternatives() { $("alternatives").hidden = true; }

// A token a verification pass gave: accepted from the proposal, or the model's own after it,
// with the proposed tokens the model refused there.
function passNote(verified) {
  const note = document.createElement("div");
  if (verified.accepted) {
    note.textContent = "speculation: proposed, and the model agreed";
    return note;
  }
  note.textContent = "speculation: the model's own token";
  if (verified.refused.length) {
    note.append("; it refused the proposal ");
    const refused = document.createElement("span");
    refused.className = "refused";
    refused.textContent = verified.refused.map((token) => JSON.stringify(token.text)).join(" ");
    note.append(refused);
  }
  return note;
}

// A verification pass comes after its tokens: mark the last `tokens` of them, the accepted
// ones, and the model's own where it refused the rest of the proposal.
function markPass(verified) {
  const spans = $("tokens").querySelectorAll(".token:not(.prompt)");
  const first = spans.length - verified.tokens;
  for (let offset = 0; offset < verified.tokens; offset++) {
    const accepted = offset < verified.accepted;
    const refused = accepted ? [] : verified.proposed.slice(verified.accepted);
    if (accepted) spans[first + offset].classList.add("accepted");
    else if (refused.length) spans[first + offset].classList.add("refused-here");
    state.passes[first + offset] = { accepted, refused };
  }
}


// ---- Generation ---------------------------------------------------------------------------

async function generate() {
  if (state.running) return;
  const prompt = $("prompt").value;
  if (!prompt.trim()) { setStatus("Type a prompt first.", true); return; }
  const controller = new AbortController();
  state.running = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  $("tokens").replaceChildren();
  $("output").textContent = "";
  state.steps = [];
  state.passes = [];  // per new token: {accepted, refused} where a verification pass gave it
  state.cacheHistory = [];
  state.attention = null;  // the last map and its read-out describe the previous sequence
  $("heatmap").replaceChildren();
  $("cell-info").textContent = CELL_INFO;
  renderCache(null);
  try {
    const tokenized = await (await api("/v1/tokenize", { prompt })).json();
    state.ids = tokenized.tokens.map((token) => token.id);
    state.promptLength = tokenized.count;
    tokenized.tokens.forEach((token, index) => addToken(token.text ?? token.label, index, null));
    const body = { prompt, stream: true, top_logprobs: TOP_ALTERNATIVES, inspect_cache: "steps", ...settings() };
    const response = await api("/v1/generate", body, controller.signal);
    await readEvents(response, onEvent);
  } catch (error) {
    if (error.name === "AbortError") setStatus(`stopped after ${state.steps.length} tokens`);
    else setStatus(error.message, true);
  } finally {
    state.running = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
  if (state.ids.length) await drawAttention();
}

function onEvent(event) {
  if (event.logprob) {
    state.steps.push(event.logprob);
    state.ids.push(event.logprob.token);
    addToken(event.logprob.text, state.ids.length - 1, event.logprob);
  } else if (event.speculation) {
    markPass(event.speculation);
  } else if (event.cache) {
    state.cacheHistory.push(event.cache.seq_len);
    renderCache(event.cache);
  } else if (typeof event.text === "string") {
    $("output").textContent += event.text;
  } else if (event.result) {
    const result = event.result;
    const timings = result.timings;
    const speed = timings && timings.tokens_per_s ? ` · ${timings.tokens_per_s.toFixed(1)} tokens/s` : "";
    const shape = result.constraint
      ? ` · shaped by ${result.constraint.kind}: ${result.constraint.complete ? "complete" : "INCOMPLETE"}`
      : "";
    const speculation = result.speculation;
    const speculated = speculation
      ? ` · speculate ${speculation.method}: ${speculation.accepted} of ${speculation.proposed} proposals accepted`
      : "";
    setStatus(`${result.token_ids.length} tokens (${result.finish_reason}) in ${result.mode} mode${speed}${shape}${speculated}`);
    if (!result.cache_snapshots || !result.cache_snapshots.length) renderCache(null, result.mode);
  } else if (event.error) {
    throw new Error(event.error.message);
  }
}

async function readEvents(response, handle) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const line = buffered.slice(0, end).trim();
      buffered = buffered.slice(end + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") return;
      handle(JSON.parse(data));
    }
  }
}

function stop() {
  if (state.running) state.running.abort();
}

// ---- KV cache -----------------------------------------------------------------------------

function bytes(count) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = count, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function renderCache(snapshot, mode) {
  const table = $("cache");
  table.replaceChildren();
  if (!snapshot) {
    $("cache-summary").textContent = mode === "greedy"
      ? "greedy mode keeps no cache: every step runs the whole sequence again."
      : "Generate to watch it fill.";
    return;
  }
  const used = snapshot.layers.reduce((sum, layer) => sum + layer.used_bytes, 0);
  const allocated = snapshot.layers.reduce((sum, layer) => sum + layer.bytes, 0);
  $("cache-summary").textContent =
    `after token ${snapshot.new_tokens}: ${snapshot.seq_len} positions held · ` +
    `${bytes(used)} used of ${bytes(allocated)} allocated` + (snapshot.event ? ` · ${snapshot.event}` : "");
  const head = table.createTHead().insertRow();
  for (const title of ["layer", "keys", "values", "dtype", "used", "allocated (positions)"]) {
    const cell = document.createElement("th");
    cell.textContent = title;
    head.appendChild(cell);
  }
  const body = table.createTBody();
  for (const layer of snapshot.layers) {
    const row = body.insertRow();
    row.insertCell().textContent = layer.layer;
    row.insertCell().textContent = `[${layer.key_shape.join(", ")}]`;
    row.insertCell().textContent = `[${layer.value_shape.join(", ")}]`;
    row.insertCell().textContent = layer.dtype;
    row.insertCell().textContent = bytes(layer.used_bytes);
    row.insertCell().textContent = `${bytes(layer.bytes)} (${layer.capacity})`;
  }
}

// ---- Attention ----------------------------------------------------------------------------

function fillSelect(select, count, extra) {
  select.replaceChildren();
  for (let index = 0; index < count; index += 1) select.add(new Option(String(index), String(index)));
  if (extra) select.add(new Option(extra, "all"));
}

let attentionAsked = 0;
let explainAsked = 0;

async function drawAttention() {
  if (!state.ids.length) return;
  const everyHead = $("head").value === "all";
  const body = {
    prompt: state.ids,
    layer: Number($("layer").value),
    head: everyHead ? 0 : Number($("head").value),
    thumbnails: everyHead,
  };
  const asked = ++attentionAsked;  // a later choice of layer or head overrides an earlier one still on its way
  let answer;
  try {
    answer = await (await api("/v1/attention", body)).json();
  } catch (error) {
    if (asked === attentionAsked) $("heatmap").textContent = error.message;
    return;
  }
  if (asked !== attentionAsked) return;
  state.attention = answer;
  if (everyHead) drawHeadGrid(state.attention);
  else drawHeatmap(state.attention);
}

function heatmapSvg(rows, size, labels) {
  const count = rows.length;
  const cell = size / count;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("width", size);
  svg.setAttribute("height", size);
  svg.setAttribute("role", "img");
  rows.forEach((row, query) => {
    for (let key = 0; key < count; key += 1) {
      const weight = key < row.length ? row[key] : 0;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", key * cell);
      rect.setAttribute("y", query * cell);
      rect.setAttribute("width", cell);
      rect.setAttribute("height", cell);
      rect.style.fill = `rgba(var(--cell), ${Math.sqrt(weight).toFixed(4)})`;
      if (labels) {
        rect.classList.add("cell");
        rect.dataset.query = query;
        rect.dataset.key = key;
        rect.dataset.weight = weight;
        rect.addEventListener("mouseenter", () => describeCell(labels, query, key, weight));
      }
      svg.appendChild(rect);
    }
  });
  return svg;
}

const CELL_INFO = "Rows are queries, columns the keys they attend to.";

// Up to this many tokens the map is SVG, a rect per cell; beyond, a canvas (1,024 tokens would
// be a million rects).
const SVG_TOKENS = 128;

function describeCell(labels, query, key, weight) {
  $("cell-info").textContent =
    `query ${query} ${JSON.stringify(labels[query])} → key ${key} ${JSON.stringify(labels[key])}: ` +
    `weight ${weight.toFixed(4)}`;
}

function heatmapCanvas(rows, size, labels) {
  const count = rows.length;
  const canvas = document.createElement("canvas");
  canvas.width = count;
  canvas.height = count;
  canvas.style.width = `${size}px`;
  canvas.style.height = `${size}px`;
  canvas.style.imageRendering = "pixelated";
  canvas.setAttribute("role", "img");
  const context = canvas.getContext("2d");
  const image = context.createImageData(count, count);
  const [red, green, blue] = getComputedStyle(document.documentElement)
    .getPropertyValue("--cell").split(",").map(Number);
  rows.forEach((row, query) => {
    row.forEach((weight, key) => {
      const at = 4 * (query * count + key);
      image.data.set([red, green, blue, Math.round(255 * Math.sqrt(weight))], at);
    });
  });
  context.putImageData(image, 0, 0);
  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const query = Math.min(count - 1, Math.floor(((event.clientY - box.top) / box.height) * count));
    const key = Math.min(count - 1, Math.floor(((event.clientX - box.left) / box.width) * count));
    describeCell(labels, query, key, key <= query ? rows[query][key] : 0);
  });
  return canvas;
}

function drawHeatmap(amap) {
  const count = amap.weights.length;
  const size = Math.min(640, Math.max(200, count * 14));
  const map = count <= SVG_TOKENS ? heatmapSvg(amap.weights, size, amap.tokens) : heatmapCanvas(amap.weights, size, amap.tokens);
  map.setAttribute("aria-label", `layer ${amap.layer} head ${amap.head}: attention of ${count} tokens`);
  $("heatmap").replaceChildren(map);
}

function drawHeadGrid(amap) {
  const grid = document.createElement("div");
  grid.className = "grid";
  amap.thumbnails.forEach((rows, head) => {
    const figure = document.createElement("figure");
    figure.tabIndex = 0;
    figure.appendChild(heatmapSvg(rows, 90, null));
    const caption = document.createElement("figcaption");
    caption.textContent = `head ${head}`;
    figure.appendChild(caption);
    const open = () => { $("head").value = String(head); drawAttention(); };
    figure.addEventListener("click", open);
    figure.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
    grid.appendChild(figure);
  });
  $("heatmap").replaceChildren(grid);
  $("cell-info").textContent = `layer ${amap.layer}, every head (each map averaged to at most 64 cells a side); click one to open it.`;
}

// ---- Explain ------------------------------------------------------------------------------

function vector(values, shown = 8) {
  const head = values.slice(0, shown).map((value) => value.toFixed(4)).join(", ");
  return `[${head}${values.length > shown ? `, … ${values.length - shown} more` : ""}]`;
}

async function explainPosition(position) {
  document.querySelectorAll(".token.selected").forEach((span) => span.classList.remove("selected"));
  const span = document.querySelector(`.token[data-index="${position}"]`);
  if (span) span.classList.add("selected");
  const layer = Number($("layer").value);
  const head = $("head").value === "all" ? 0 : Number($("head").value);
  const panel = $("explain");
  panel.className = "";
  panel.textContent = "working…";
  const asked = ++explainAsked;  // the last token clicked is the one explained
  let explained;
  try {
    explained = await (await api("/v1/explain", { prompt: state.ids, layer, head, position })).json();
  } catch (error) {
    if (asked !== explainAsked) return;
    panel.textContent = error.message;
    panel.className = "error";
    return;
  }
  if (asked !== explainAsked) return;
  state.explanation = explained;
  const steps = explained.steps;
  const lines = [
    [`query position ${position} ${JSON.stringify(explained.tokens[position])}, layer ${layer}, head ${head} of ${explained.n_head}`, null],
    [`x, the input row after layer norm [${steps.x.length}]`, vector(steps.x)],
    [`q = x·W_q + b_q [${steps.query.length}]`, vector(steps.query)],
    [`K: the keys of positions 0..${steps.keys.length - 1} [${steps.keys.length} × ${explained.head_dim}]; k of this position`, vector(steps.keys[position])],
    [`V: the values; v of this position`, vector(steps.values[position])],
    [`scores q·k_j for every key j`, vector(steps.raw_scores, 12)],
    [`scale 1/√d_k = ${steps.scale.toFixed(6)}; scaled scores`, vector(steps.scaled_scores, 12)],
    [`causal mask: keys 0..${position} allowed, ${steps.allowed.length - position - 1} later ones masked`, steps.allowed.map((allowed) => (allowed ? "1" : "0")).join("")],
    [`softmax weights (sum ${steps.weights.reduce((a, b) => a + b, 0).toFixed(4)})`, vector(steps.weights, 12)],
    [`weighted sum Σ_j weight_j · v_j, this head's output [${steps.head_output.length}]`, vector(steps.head_output, steps.head_output.length)],
    [`after the output projection [${explained.attention_output.length}]; checked against Hugging Face: ${explained.check.passed ? "equal" : "DIFFERENT"} (max |Δ| ${explained.check.max_abs_error.toExponential(1)})`, vector(explained.attention_output)],
  ];
  const list = document.createElement("ol");
  for (const [label, value] of lines) {
    const item = document.createElement("li");
    item.textContent = label;
    if (value !== null) {
      const values = document.createElement("div");
      values.className = "vector";
      values.textContent = value;
      item.appendChild(values);
    }
    list.appendChild(item);
  }
  const final = document.createElement("output");
  final.id = "explain-final";
  final.hidden = true;
  final.textContent = JSON.stringify(steps.head_output);
  panel.replaceChildren(list, final);
}

// ---- Modes --------------------------------------------------------------------------------

async function compareModes() {
  const prompt = $("prompt").value;
  const target = $("comparison");
  target.textContent = "running every mode…";
  $("compare").disabled = true;
  try {
    const comparison = await (await api("/v1/compare", { prompt, ...settings(), mode: undefined })).json();
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const title of ["mode", "tokens", "text"]) {
      const cell = document.createElement("th");
      cell.textContent = title;
      head.appendChild(cell);
    }
    const body = table.createTBody();
    for (const [mode, result] of Object.entries(comparison.results)) {
      const row = body.insertRow();
      row.dataset.mode = mode;
      row.insertCell().textContent = mode;
      row.insertCell().textContent = result.token_ids.length;
      row.insertCell().textContent = result.text;
    }
    const verdict = document.createElement("p");
    const divergence = comparison.divergence;
    verdict.id = "verdict";
    verdict.className = comparison.agree ? "agree" : "part";
    verdict.textContent = comparison.agree
      ? `All ${Object.keys(comparison.results).length} modes agree, token for token.`
      : `${divergence.other_mode} parts from ${divergence.reference_mode} at new token ${divergence.index}` +
        (divergence.near_tie ? " (a near tie: the logits differ by rounding)" : "");
    target.replaceChildren(verdict, table);
  } catch (error) {
    target.textContent = error.message;
  } finally {
    $("compare").disabled = false;
  }
}

// ---- Start --------------------------------------------------------------------------------

async function start() {
  const health = await (await fetch("/health")).json();
  $("model").textContent = `${health.model} · ${health.layers} layers × ${health.heads} heads · context ${health.context}`;
  fillSelect($("layer"), health.layers);
  fillSelect($("head"), health.heads, "all heads");
  const initial = new URLSearchParams(window.location.search).get("prompt");
  if (initial) $("prompt").value = initial;
  $("settings").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
  // The browser's own check of a field (a negative temperature, 0 tokens) blocks a submit: say why.
  $("settings").addEventListener("invalid", (event) => {
    const label = event.target.closest("label");
    const name = label ? label.firstChild.textContent.trim() : event.target.id;
    setStatus(`${name}: ${event.target.validationMessage}`, true);
  }, true);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("settings").requestSubmit(); }
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") stop(); });
  $("stop").addEventListener("click", stop);
  $("layer").addEventListener("change", drawAttention);
  $("head").addEventListener("change", drawAttention);
  $("compare").addEventListener("click", compareModes);
  document.body.dataset.ready = "true";
}

start().catch((error) => setStatus(error.message, true));
