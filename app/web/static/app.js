// The selfinstruct dashboard: one page over the public /v1 API, routed by URL fragment.
// Plain modules and SVG, no libraries: nothing is fetched from anywhere but this service.

const TOKEN_KEY = "selfinstruct.apiToken";
const FINAL_RUN = new Set(["succeeded", "failed", "cancelled"]);
const RUN_ORDER = { queued: 0, running: 1, succeeded: 2, failed: 2, cancelled: 2 };
/** A replayed stream starts with old statuses; never step back from what a GET already said. */
const later = (current, next) => ((RUN_ORDER[next] ?? 0) >= (RUN_ORDER[current] ?? 0) ? next : current);
const FINAL_JOB = new Set(["succeeded", "failed", "cancelled"]);
const view = document.getElementById("view");
let cleanups = []; // closes the event streams of the view being left
let navigation = 0; // counts route changes, so late answers for an old view are dropped

// --- small helpers -------------------------------------------------------------------------

/** Build an element; strings become text nodes, so nothing from the API is parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const svgNS = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(svgNS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const fmt = new Intl.NumberFormat("en-US");
const num = (n) => (n === null || n === undefined ? "–" : fmt.format(n));
const money = (n) => `$${(n ?? 0).toFixed(4)}`;
const when = (value) => {
  if (value === null || value === undefined) return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return date.toLocaleString();
};
const badge = (status) => h("span", { class: `badge status-${status}` }, status);
const enc = encodeURIComponent;

// --- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const detail = typeof body === "object" && body ? body.detail : body;
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.errors = (body && body.errors) || [];
  }
}

const tokenDialog = document.getElementById("token-dialog");
const tokenForm = document.getElementById("token-form");

/** Ask for the API token once; it is kept in localStorage and sent on changing requests. */
function askToken(reason) {
  document.getElementById("token-reason").textContent =
    reason || "Changing requests need the service's API token. It is kept in this browser only.";
  tokenForm.reset();
  tokenDialog.returnValue = "";
  return new Promise((resolve) => {
    tokenDialog.addEventListener(
      "close",
      () => {
        const value = tokenForm.elements.token.value.trim();
        if (tokenDialog.returnValue === "save" && value) {
          localStorage.setItem(TOKEN_KEY, value);
          setReadCookie(value);
          resolve(value);
        } else resolve(null);
      },
      { once: true },
    );
    tokenDialog.showModal();
  });
}
document.getElementById("token-button").addEventListener("click", () => askToken());

/** Event streams and download links cannot send a header: with private reads the server takes
 * the token from this cookie for reads (never for changes). */
function setReadCookie(token) {
  document.cookie = `selfinstruct_token=${encodeURIComponent(token)}; path=/v1; SameSite=Strict`;
}
if (localStorage.getItem(TOKEN_KEY)) setReadCookie(localStorage.getItem(TOKEN_KEY));

async function api(method, path, body) {
  const send = () => {
    const headers = { Accept: "application/json" };
    const form = body instanceof FormData; // files: the browser writes the multipart body
    if (body !== undefined && !form) headers["Content-Type"] = "application/json";
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    return fetch(path, {
      method,
      headers,
      body: body === undefined || form ? body : JSON.stringify(body),
    });
  };
  let response = await send();
  if (response.status === 401) {
    const reason = localStorage.getItem(TOKEN_KEY)
      ? "The saved API token was refused; enter the current one."
      : method === "GET"
        ? "This service keeps its data private: reading needs its API token. It is kept in this browser only."
        : undefined;
    if (await askToken(reason)) response = await send();
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Server-sent events; the stream is closed when the view changes or the source ends. */
function follow(url, handlers) {
  const source = new EventSource(url);
  const owner = navigation; // a view the user already left must not update the page
  const { done, ended, ...named } = handlers;
  for (const [name, handler] of Object.entries(named)) {
    source.addEventListener(name, (event) => {
      if (owner !== navigation) source.close();
      else handler(JSON.parse(event.data));
    });
  }
  // The server closes a finished stream; the browser would reconnect, so decide here.
  source.addEventListener("error", async () => {
    if (source.readyState === EventSource.CLOSED || done?.() || (ended && (await ended()))) {
      source.close();
    }
  });
  cleanups.push(() => source.close());
  return source;
}

// --- forms: the API validates, the form shows its errors next to the fields ----------------

/** Collect named inputs into a nested body: `sampling.max_tokens` becomes {sampling: {...}}. */
function formBody(form) {
  const body = {};
  for (const input of form.querySelectorAll("[name]")) {
    if (input.disabled) continue;
    let value = input.value;
    if (input.type === "checkbox") value = input.checked;
    else if (value === "") continue;
    else if (input.dataset.type === "int") value = Number.parseInt(value, 10);
    else if (input.dataset.type === "float") value = Number.parseFloat(value);
    else if (input.dataset.type === "json") {
      try {
        value = JSON.parse(value);
      } catch {
        value = { __invalid_json__: value }; // the API names the field in its 422
      }
    }
    const path = input.name.split(".");
    let target = body;
    for (const key of path.slice(0, -1)) target = target[key] ??= {};
    target[path.at(-1)] = value;
  }
  return body;
}

function clearErrors(form) {
  form.querySelectorAll(".field-error, .form-error").forEach((node) => node.remove());
}

function showErrors(form, error) {
  clearErrors(form);
  const unplaced = [];
  for (const item of error.errors || []) {
    const field = item.field || "";
    const input =
      form.querySelector(`[name="${CSS.escape(field)}"]`) ||
      [...form.querySelectorAll("[name]")].find((el) => field.startsWith(`${el.name}.`));
    if (input) input.after(h("span", { class: "field-error", role: "alert" }, item.reason));
    else unplaced.push(`${field || "body"}: ${item.reason}`);
  }
  const text = unplaced.length ? unplaced.join("; ") : error.message;
  form.append(h("p", { class: "form-error", role: "alert" }, text));
}

/** Submit a form to the API; on success call `done` with the response. */
function apiForm(attrs, fields, submitLabel, request, done) {
  const button = h("button", { type: "submit" }, submitLabel);
  // novalidate: the API is the one place the rules live; its errors are shown by each field
  const form = h("form", { ...attrs, novalidate: true }, fields, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    button.disabled = true;
    try {
      done(await request(formBody(form)));
    } catch (error) {
      if (error instanceof ApiError) showErrors(form, error);
      else throw error;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

const field = (label, input) => h("label", {}, label, input);
const numberInput = (name, attrs = {}) =>
  h("input", { type: "number", name, "data-type": "int", ...attrs });

async function modelIds() {
  return (await api("GET", "/v1/models")).data.map((m) => m.id);
}

// a fresh set per <select>: an element can sit in one list only
const modelOptions = (ids) => ids.map((id) => h("option", { value: id }, id));

// --- charts (SVG) ----------------------------------------------------------------------------

/** Vertical bars for histogram bins `{low, high, count}`. */
function histogram(bins, { label = (b) => `${b.low}`, cls = "bar" } = {}) {
  const width = 420, height = 180, pad = 28;
  const max = Math.max(1, ...bins.map((b) => b.count));
  const step = (width - pad) / Math.max(1, bins.length);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height + 22}`, role: "img" });
  svg.append(s("line", { class: "axis", x1: pad, x2: width, y1: height, y2: height }));
  bins.forEach((bin, i) => {
    const barHeight = ((height - 16) * bin.count) / max;
    const x = pad + i * step + 2;
    svg.append(
      s("rect", { class: cls, x, y: height - barHeight, width: step - 4, height: barHeight },
        s("title", {}, `${label(bin)}: ${bin.count}`)),
      s("text", { x: x + (step - 4) / 2, y: height + 14, "text-anchor": "middle" }, label(bin)),
    );
    if (bin.count) {
      svg.append(s("text", { class: "value", x: x + (step - 4) / 2, y: height - barHeight - 3,
        "text-anchor": "middle" }, bin.count));
    }
  });
  return h("div", { class: "chart" }, svg);
}

/** Horizontal bars for `[label, count]` pairs (leading verbs, rejection reasons). */
function hbars(pairs, { cls = "bar" } = {}) {
  const width = 420, row = 20, labelWidth = 150;
  const max = Math.max(1, ...pairs.map((p) => p[1]));
  const svg = s("svg", { viewBox: `0 0 ${width} ${Math.max(row, pairs.length * row)}`, role: "img" });
  pairs.forEach(([name, count], i) => {
    const barWidth = ((width - labelWidth - 40) * count) / max;
    svg.append(
      s("text", { x: labelWidth - 6, y: i * row + 14, "text-anchor": "end" }, name),
      s("rect", { class: cls, x: labelWidth, y: i * row + 3, width: barWidth, height: row - 6 }),
      s("text", { class: "value", x: labelWidth + barWidth + 4, y: i * row + 14 }, count),
    );
  });
  if (!pairs.length) return h("p", { class: "muted" }, "Nothing yet.");
  return h("div", { class: "chart" }, svg);
}

/** Loss against step: training (solid) and evaluation (dashed). */
function lossChart(train, evals) {
  const width = 900, height = 260, pad = 44;
  const all = [...train, ...evals];
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "data-points": train.length });
  if (!all.length) return h("div", { class: "chart" }, h("p", { class: "muted" }, "No steps yet."));
  const minStep = Math.min(...all.map((p) => p[0]));
  const maxStep = Math.max(minStep + 1, ...all.map((p) => p[0]));
  const losses = all.map((p) => p[1]);
  const lo = Math.min(...losses), hi = Math.max(...losses);
  const span = hi - lo || 1;
  const x = (step) => pad + ((width - pad - 8) * (step - minStep)) / (maxStep - minStep);
  const y = (loss) => 8 + ((height - pad) * (hi - loss)) / span;
  const path = (points) => points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
  svg.append(
    s("line", { class: "axis", x1: pad, x2: width, y1: height - pad + 8, y2: height - pad + 8 }),
    s("text", { x: 2, y: 14 }, hi.toFixed(2)),
    s("text", { x: 2, y: height - pad + 8 }, lo.toFixed(2)),
    s("text", { x: width - 4, y: height - 8, "text-anchor": "end" }, `step ${maxStep}`),
  );
  if (train.length) svg.append(s("path", { class: "line", d: path(train) }));
  if (evals.length) svg.append(s("path", { class: "line eval", d: path(evals) }));
  return h("div", { class: "chart" }, svg,
    h("div", { class: "legend" }, h("span", {}, h("i"), "training loss"),
      h("span", {}, h("i", { class: "eval" }), "validation loss")));
}

// --- views -----------------------------------------------------------------------------------

// "en 73% · zh 27%" from the seeds; a fixed language shows as "zh (fixed)".
function languages(d) {
  if (d.language) return `${d.language} (fixed)`;
  const shares = Object.entries(d.languages || {});
  if (!shares.length) return "any";
  return shares.map(([code, share]) => `${code} ${Math.round(share * 100)}%`).join(" · ");
}

async function datasetsView() {
  const datasets = await api("GET", "/v1/datasets");
  const rows = datasets.data.map((d) =>
    h("tr", {},
      h("td", {}, h("a", { href: `#/d/${enc(d.name)}` }, d.name)),
      h("td", {}, d.description || ""),
      h("td", { "data-languages": d.name }, languages(d)),
      h("td", {}, num(d.seeds)),
      h("td", {}, num(d.accepted)),
      h("td", {}, num(d.rejected)),
    ));
  const create = apiForm(
    { class: "inline", id: "create-dataset" },
    [
      field("Name", h("input", { name: "name", required: true, placeholder: "my-pool" })),
      field("Description", h("input", { name: "description" })),
    ],
    "Create dataset",
    (body) => api("POST", "/v1/datasets", body),
    (d) => { location.hash = `#/d/${enc(d.name)}`; },
  );
  return [
    h("h1", {}, "Datasets"),
    h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Description", "Languages", "Seeds", "Accepted", "Rejected"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)),
    h("h2", {}, "New dataset"),
    h("div", { class: "card" }, create),
  ];
}

async function datasetView(name) {
  const [dataset, runs, models, strategies] = await Promise.all([
    api("GET", `/v1/datasets/${enc(name)}`),
    api("GET", `/v1/datasets/${enc(name)}/runs`),
    modelIds(),
    api("GET", "/v1/strategies"),
  ]);
  const runRows = runs.data.map((r) =>
    h("tr", {},
      h("td", {}, h("a", { href: `#/runs/${r.id}` }, `#${r.id}`)),
      h("td", {}, badge(r.status)),
      h("td", {}, r.strategy),
      h("td", {}, r.model),
      h("td", {}, `${num(r.counters.accepted)} / ${num(r.target)}`),
      h("td", {}, num(r.counters.rejected)),
      h("td", {}, when(r.created_at)),
    ));
  const { strategySelect, strategyFields } = strategyInputs(strategies.data);
  const withDocuments = strategies.data.filter((st) => st.needs.includes("documents")).map((st) => st.name);
  const runForm = apiForm(
    { class: "stack", id: "run-form" },
    [
      field("Target (accepted tasks)", numberInput("target", { value: 10, min: 1 })),
      field("Model", h("select", { name: "model" }, modelOptions(models))),
      field("Strategy", strategySelect),
      ...strategyFields,
      field("Language", h("select", { name: "language" },
        h("option", { value: "" }, "the pool's languages"), h("option", { value: "en" }, "en"), h("option", { value: "zh" }, "zh"))),
      field("Topic (optional: steers the examples)", h("input", { name: "topic" })),
      field("Max tokens per completion", numberInput("sampling.max_tokens", { placeholder: "default" })),
      field("Random seed", numberInput("seed", { placeholder: "default" })),
    ],
    "Start run",
    (body) => api("POST", `/v1/datasets/${enc(name)}/runs`, body),
    (run) => { location.hash = `#/runs/${run.id}`; },
  );
  const jobForm = apiForm(
    { class: "stack", id: "job-form" },
    [
      h("input", { type: "hidden", name: "dataset", value: name }),
      field("Base model", h("select", { name: "model" }, modelOptions(models))),
      field("Suffix", h("input", { name: "suffix", placeholder: "my-model" })),
      field("Epochs", numberInput("hyperparameters.n_epochs", { placeholder: "auto" })),
      field("Batch size", numberInput("hyperparameters.batch_size", { placeholder: "auto" })),
      field("Max steps", numberInput("max_steps", { placeholder: "all" })),
      field("Max sequence length (tokens)", numberInput("max_seq_len", { placeholder: "default" })),
      field("LoRA rank (empty: full fine-tune)", numberInput("lora.r", { placeholder: "full" })),
    ],
    "Start fine-tune job",
    (body) => api("POST", "/v1/fine_tuning/jobs", body),
    (job) => { location.hash = `#/jobs/${enc(job.id)}`; },
  );
  return [
    h("h1", {}, `Dataset ${dataset.name}`),
    h("p", { class: "muted" }, dataset.description || ""),
    h("p", { id: "dataset-languages" }, `Languages: ${languages(dataset)}`),
    h("div", { class: "counters" },
      counter("seeds", dataset.seeds), counter("accepted", dataset.accepted), counter("rejected", dataset.rejected)),
    h("p", { class: "row" },
      h("a", { href: `#/d/${enc(name)}/tasks` }, "Browse and review tasks"),
      h("a", { href: `#/d/${enc(name)}/stats` }, "Dataset shape"),
      h("a", { href: `/v1/datasets/${enc(name)}/export`, download: `${name}.jsonl` }, "Export JSONL")),
    h("h2", {}, "Runs"),
    runRows.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["Run", "Status", "Strategy", "Model", "Accepted / target", "Rejected", "Created"].map((c) => h("th", {}, c)))), h("tbody", {}, runRows))
      : h("p", { class: "muted" }, "No runs yet."),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Start a run"), runForm),
      h("div", { class: "card" }, h("h2", {}, "Fine-tune on this dataset"), jobForm)),
    h("div", { class: "card" },
      h("h2", {}, withDocuments.length ? `Documents (for ${withDocuments.join(", ")} runs)` : "Documents"),
      await documentsPanel(name)),
  ];
}

/** The strategy <select> and each strategy's own fields, both from GET /v1/strategies (the
 * registry): the fields of the strategies not chosen are hidden and disabled, so the form sends
 * only what the chosen one takes. */
function strategyInputs(strategies) {
  const strategyFields = strategies.map((strategy) =>
    h("div", { class: "stack", "data-strategy": strategy.name, hidden: true },
      h("p", { class: "muted" }, strategy.description),
      Object.entries(strategy.settings).map(([key, schema]) => settingInputs(key, schema))));
  const strategySelect = h("select", { name: "strategy" },
    strategies.map((st) => h("option", { value: st.name, selected: st.default }, st.name)));
  const show = () => {
    for (const box of strategyFields) {
      const on = box.dataset.strategy === strategySelect.value;
      box.hidden = !on;
      box.querySelectorAll("[name]").forEach((input) => { input.disabled = !on; });
    }
  };
  strategySelect.addEventListener("change", show);
  show();
  return { strategySelect, strategyFields };
}

/** The inputs of one setting, from its JSON Schema: a fieldset per object (one input per key
 * where the keys are a fixed list), a number, text or choice per value, and JSON for lists and
 * open maps. Empty inputs are not sent, so the API's defaults apply. */
function settingInputs(name, schema) {
  const present = (schema.anyOf || []).filter((branch) => branch.type !== "null");
  const own = present.length === 1 ? { ...present[0], ...schema, anyOf: undefined } : schema;
  const label = own.description || own.title || name;
  const values = own.additionalProperties;
  if (own.type === "object" && own.properties) {
    return h("fieldset", {}, h("legend", {}, label),
      Object.entries(own.properties).map(([key, sub]) => settingInputs(`${name}.${key}`, sub)));
  }
  if (own.type === "object" && own.propertyNames?.enum && ["integer", "number"].includes(values?.type)) {
    return h("fieldset", {}, h("legend", {}, label),
      own.propertyNames.enum.map((key) => field(key, valueInput(`${name}.${key}`, values))));
  }
  return field(label, valueInput(name, own));
}

function valueInput(name, schema) {
  const placeholder = schema.default === undefined || schema.default === null ? undefined : String(schema.default);
  if (schema.type === "integer") return numberInput(name, { placeholder });
  if (schema.type === "number") {
    return h("input", { type: "number", name, "data-type": "float", step: "any", placeholder });
  }
  if (schema.type === "string" && schema.enum) {
    return h("select", { name }, h("option", { value: "" }, placeholder || "default"),
      schema.enum.map((v) => h("option", { value: v }, v)));
  }
  if (schema.type === "string") return h("input", { name, placeholder });
  const shape = schema.type === "array" ? "a JSON list: [...]" : "JSON: {...}";
  return h("textarea", { name, "data-type": "json", rows: 2,
    placeholder: placeholder === undefined ? shape : JSON.stringify(schema.default) });
}

/** The dataset's documents, an upload (the files as they are, multipart) and a delete each. */
async function documentsPanel(name) {
  const list = h("ul", { id: "documents" });
  const message = h("p", { class: "muted", id: "documents-message" });
  const refresh = async () => {
    const docs = (await api("GET", `/v1/datasets/${enc(name)}/documents`)).data;
    list.replaceChildren(...docs.map((d) => h("li", { "data-document": d.id },
      `${d.name} · ${d.format} · ${num(d.passages)} passages `,
      h("button", { type: "button", class: "danger", onclick: async () => {
        await api("DELETE", `/v1/datasets/${enc(name)}/documents/${d.id}`);
        await refresh();
      } }, "Delete"))));
    if (!docs.length) list.replaceChildren(h("li", { class: "muted" }, "No documents yet."));
  };
  const files = h("input", { type: "file", multiple: true, accept: ".txt,.md,.markdown,.jsonl,text/*" });
  const upload = h("form", { class: "row", id: "document-form" }, files,
    h("button", { type: "submit" }, "Add documents"));
  upload.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    try {
      const form = new FormData();
      for (const file of files.files) form.append("file", file, file.name);
      const added = await api("POST", `/v1/datasets/${enc(name)}/documents`, form);
      message.textContent = `Added ${added.count} document(s).`;
      upload.reset();
      await refresh();
    } catch (error) {
      message.textContent = error.message;
    }
  });
  await refresh();
  return [list, upload, message];
}

function rate(value) {
  return value === undefined || value === null ? "–" : Number(value).toFixed(value >= 10 ? 0 : 1);
}

function counter(label, value, id) {
  return h("div", { class: "counter", "data-counter": id || label }, h("b", {}, num(value)), h("span", {}, label));
}

async function runView(id) {
  let run = await api("GET", `/v1/runs/${enc(id)}`);
  const status = h("span", { id: "run-status" }, badge(run.status));
  const counters = h("div", { class: "counters", id: "run-counters" });
  const funnel = h("div", { id: "run-funnel" });
  const candidates = h("tbody", { id: "run-candidates" });
  const message = h("p", { id: "run-message", class: "muted" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-run",
    onclick: async () => {
      try {
        run = await api("POST", `/v1/runs/${run.id}/cancel`);
        render();
      } catch (error) { message.textContent = error.message; }
    } }, "Cancel run");

  const render = () => {
    const c = run.counters;
    status.replaceChildren(badge(run.status));
    counters.replaceChildren(
      counter("candidates", c.candidates), counter("accepted", c.accepted),
      counter("rejected", c.rejected), counter("requests", c.requests),
      counter("requests in flight", c.in_flight, "in_flight"),
      h("div", { class: "counter", "data-counter": "requests_per_s" }, h("b", {}, rate(c.requests_per_s)), h("span", {}, "requests/s")),
      h("div", { class: "counter", "data-counter": "accepted_per_s" }, h("b", {}, rate(c.accepted_per_s)), h("span", {}, "accepted/s")),
      counter("failed requests", c.failed_requests, "failed_requests"),
      counter("retries", c.retries),
      counter("answers without tasks", c.unparseable_completions, "unparseable_completions"),
      counter("prompt tokens", c.prompt_tokens, "prompt_tokens"),
      counter("completion tokens", c.completion_tokens, "completion_tokens"),
      h("div", { class: "counter", "data-counter": "cost" }, h("b", {}, money(c.cost)), h("span", {}, "cost")),
    );
    const reasons = Object.entries(c.rejected_by_reason || {}).sort((a, b) => b[1] - a[1]);
    funnel.replaceChildren(
      hbars([["candidates", c.candidates], ["accepted", c.accepted]], { cls: "bar ok" }),
      h("h2", {}, "Rejections by reason"),
      hbars(reasons, { cls: "bar bad" }),
      ...(c.judged || c.unjudged
        ? [h("h2", {}, "Judge ratings"), hbars([...Object.entries(c.ratings || {}).sort(), ["unjudged", c.unjudged]])]
        : []),
    );
    cancel.disabled = FINAL_RUN.has(run.status);
    const end = [run.stop_reason && `stopped: ${run.stop_reason}`, run.error].filter(Boolean).join(" · ");
    if (end) message.textContent = end;
  };
  const addCandidate = (data) => {
    candidates.prepend(h("tr", {},
      h("td", {}, data.task_id ? h("a", { href: `#/tasks/${data.task_id}` }, `#${data.task_id}`) : "–"),
      h("td", {}, h("div", { lang: "" }, data.instruction)),
      h("td", {}, badge(data.status)),
      h("td", {}, data.reason || ""),
      h("td", {}, data.score === null || data.score === undefined ? "–" : data.score.toFixed(2)),
    ));
    while (candidates.children.length > 200) candidates.lastChild.remove();
  };
  render();
  const apply = (data) => {
    for (const key of Object.keys(run.counters)) if (key in data) run.counters[key] = data[key];
  };
  follow(`/v1/runs/${run.id}/events`, {
    status: (e) => { run.status = later(run.status, e.data.status); render(); },
    counters: (e) => { apply(e.data); run.status = later(run.status, "running"); render(); },
    candidate: (e) => addCandidate(e.data),
    llm_errors: (e) => {  // the commit's counters event follows with the totals
      const d = e.data;
      message.textContent = d.last_error || (d.last_unparseable ? `an answer held no task: ${d.last_unparseable}` : "");
    },
    end: async (e) => {
      apply(e.data);
      run.status = e.data.status; // final: the stream may close before the GET below returns
      render();
      run = await api("GET", `/v1/runs/${run.id}`);
      render();
    },
    done: () => FINAL_RUN.has(run.status),
  });
  return [
    h("h1", { class: "row" }, `Run #${run.id} `, status, h("span", { class: "spacer" }), cancel),
    h("p", { class: "muted" },
      h("a", { href: `#/d/${enc(run.dataset)}` }, run.dataset), ` · ${run.strategy} · ${run.model} · target ${run.target}`),
    message,
    counters,
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Funnel"), funnel),
      h("div", { class: "card candidates wide" }, h("h2", {}, "Recent candidates"),
        h("table", {}, h("thead", {}, h("tr", {}, ["Task", "Instruction", "Verdict", "Reason", "ROUGE-L"].map((c) => h("th", {}, c)))), candidates))),
  ];
}

async function statsView(name) {
  const stats = await api("GET", `/v1/datasets/${enc(name)}/stats`);
  const words = (b, i, bins) => (i === bins.length - 1 ? `${b.low}+` : `${b.low}`);
  const lengthChart = (bins) => histogram(bins, { label: (b) => words(b, bins.indexOf(b), bins) });
  const classification = [["classification", stats.classification], ["other", stats.non_classification]];
  const share = stats.instructions ? Math.round((100 * stats.classification) / stats.instructions) : 0;
  const reasons = Object.entries(stats.rejected_by_reason).sort((a, b) => b[1] - a[1]);
  return [
    h("h1", {}, `Dataset shape: ${name}`),
    h("p", {}, h("a", { href: `#/d/${enc(name)}` }, `back to ${name}`)),
    h("div", { class: "counters" },
      counter("instructions", stats.instructions), counter("instances", stats.instances),
      counter("seeds", stats.seeds), counter("empty inputs", stats.empty_inputs, "empty_inputs"),
      h("div", { class: "counter", "data-counter": "classification_share" }, h("b", {}, `${share}%`), h("span", {}, "classification"))),
    h("div", { class: "grid", id: "stats-charts" },
      h("div", { class: "card", "data-chart": "rouge" }, h("h2", {}, "ROUGE-L to the nearest seed"),
        histogram(stats.rouge_to_nearest_seed, { label: (b) => b.low.toFixed(1) })),
      h("div", { class: "card", "data-chart": "instruction_length" }, h("h2", {}, "Instruction length (words)"), lengthChart(stats.instruction_length)),
      h("div", { class: "card", "data-chart": "input_length" }, h("h2", {}, "Input length (words)"), lengthChart(stats.input_length)),
      h("div", { class: "card", "data-chart": "output_length" }, h("h2", {}, "Output length (words)"), lengthChart(stats.output_length)),
      h("div", { class: "card", "data-chart": "verbs" }, h("h2", {}, "Leading words"), hbars(stats.leading_words)),
      h("div", { class: "card", "data-chart": "classification" }, h("h2", {}, "Classification share"), hbars(classification)),
      h("div", { class: "card", "data-chart": "reasons" }, h("h2", {}, "Rejections by reason"), hbars(reasons, { cls: "bar bad" })),
      h("div", { class: "card", "data-chart": "ratings" }, h("h2", {}, "Judge ratings (accepted tasks)"),
        hbars(Object.entries(stats.ratings?.overall || {})))),
  ];
}

function taskCard(task, onChange) {
  const node = h("div", { class: "task", "data-task": task.id });
  const draw = () => {
    const instances = task.instances.map((i) =>
      h("pre", {}, i.input ? `Input: ${i.input}\nOutput: ${i.output}` : `Output: ${i.output}`));
    const setStatus = (status) => async () => {
      let note;
      if (status === "rejected") {
        note = prompt("Why is it rejected? (optional)");
        if (note === null) return; // cancelled
      }
      try {
        Object.assign(task, await api("PATCH", `/v1/tasks/${task.id}`, note ? { status, note } : { status }));
        draw();
      } catch (error) { alert(error.message); }
    };
    node.replaceChildren(
      h("div", { class: "instruction" }, task.instruction),
      h("div", { class: "meta" },
        h("span", {}, `#${task.id}`), badge(task.status), h("span", {}, task.origin),
        task.judgement && h("span", { class: "badge", "data-rating": task.rating || "unjudged", title: task.judgement.rationale },
          task.rating ? `rated ${task.rating}` : "unjudged"),
        task.rejection_reason && h("span", { class: "reason" }, task.rejection_reason),
        task.max_rouge !== null && task.max_rouge !== undefined && h("span", {}, `ROUGE-L ${task.max_rouge.toFixed(2)}`),
        task.is_classification && h("span", {}, "classification"),
        task.run_id && h("a", { href: `#/runs/${task.run_id}` }, `run #${task.run_id}`),
        task.edited_from_id && h("span", {}, `edited from #${task.edited_from_id}`),
        task.split === "held_out" && h("span", { class: "badge", "data-split": "held_out" }, "held out"),
        task.contaminated && h("span", { class: "reason", "data-contaminated": "true" },
          `contaminated: ${(task.contamination?.score ?? 0).toFixed(2)} ROUGE-L to ${task.contamination?.dataset ?? "?"} #${task.contamination?.task_id ?? "?"}`)),
      ...instances,
      h("div", { class: "actions" },
        h("button", { type: "button", class: "quiet", "data-action": "accept", disabled: task.status === "accepted", onclick: setStatus("accepted") }, "Accept"),
        h("button", { type: "button", class: "danger", "data-action": "reject", disabled: task.status === "rejected", onclick: setStatus("rejected") }, "Reject"),
        h("button", { type: "button", class: "quiet", "data-action": "edit", onclick: () => node.append(editForm()) }, "Edit")),
    );
  };
  const editForm = () => {
    const form = apiForm(
      { class: "stack edit-form" },
      [
        field("Instruction", h("textarea", { name: "instruction" }, task.instruction)),
        field("Instances (JSON list of {input, output})",
          h("textarea", { name: "instances", "data-type": "json", rows: 5 }, JSON.stringify(task.instances, null, 1))),
        field("Note", h("input", { name: "note" })),
      ],
      "Save edit",
      (body) => api("POST", `/v1/tasks/${task.id}/edits`, body),
      async (edited) => {
        Object.assign(task, await api("GET", `/v1/tasks/${task.id}`));
        draw();
        onChange(edited);
      },
    );
    return form;
  };
  draw();
  return node;
}

async function tasksView(name, params) {
  const list = h("div", { id: "task-list" });
  const more = h("button", { type: "button", class: "quiet", id: "more-tasks" }, "Load more");
  const count = h("span", { class: "muted" });
  let cursor = null, shown = 0;
  const filters = h("form", { class: "inline", id: "task-filters" },
    field("Search", h("input", { name: "contains", value: params.get("contains") || "", placeholder: "text in the instruction" })),
    field("Status", h("select", { name: "status" }, ["", "accepted", "rejected"].map((v) => h("option", { value: v, selected: params.get("status") === v }, v || "any")))),
    field("Origin", h("select", { name: "origin" }, ["", "seed", "generated", "edited", "evolved", "backtranslated"].map((v) => h("option", { value: v, selected: params.get("origin") === v }, v || "any")))),
    field("Classification", h("select", { name: "is_classification" }, [["", "any"], ["true", "yes"], ["false", "no"]].map(([v, t]) => h("option", { value: v, selected: params.get("is_classification") === v }, t)))),
    field("Run", h("input", { name: "run_id", type: "number", value: params.get("run_id") || "", min: 1 })),
    field("Rating", h("select", { name: "rating" }, ["", "A", "B", "C", "D"].map((v) => h("option", { value: v, selected: params.get("rating") === v }, v || "any")))),
    field("Judged", h("select", { name: "judged" }, [["", "any"], ["true", "yes"], ["false", "never"]].map(([v, t]) => h("option", { value: v, selected: params.get("judged") === v }, t)))),
    field("Split", h("select", { name: "split" }, [["", "any"], ["train", "train"], ["held_out", "held out"]].map(([v, t]) => h("option", { value: v, selected: params.get("split") === v }, t)))),
    field("Contaminated", h("select", { name: "contaminated" }, [["", "any"], ["true", "yes"], ["false", "no"]].map(([v, t]) => h("option", { value: v, selected: params.get("contaminated") === v }, t)))),
    h("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const el of filters.querySelectorAll("[name]")) if (el.value) query.set(el.name, el.value);
    location.hash = `#/d/${enc(name)}/tasks?${query}`;
  });
  const load = async () => {
    const query = new URLSearchParams(params);
    query.set("limit", "50");
    if (cursor) query.set("after", cursor);
    try {
      const page = await api("GET", `/v1/datasets/${enc(name)}/tasks?${query}`);
      for (const task of page.data) list.append(taskCard(task, (edited) => list.prepend(taskCard(edited, () => {}))));
      shown += page.data.length;
      count.textContent = `${shown} shown`;
      cursor = page.next_cursor;
      more.hidden = !page.has_more;
    } catch (error) {
      list.append(h("p", { class: "form-error" }, error.message));
      more.hidden = true;
    }
  };
  more.addEventListener("click", load);
  await load();
  return [
    h("h1", {}, `Tasks in ${name}`),
    h("p", {}, h("a", { href: `#/d/${enc(name)}` }, `back to ${name}`), " ", count),
    filters, list, more,
  ];
}

async function taskView(id) {
  const task = await api("GET", `/v1/tasks/${enc(id)}`);
  const nearest = (task.nearest || []).map((n) =>
    h("li", {}, `${(n.score ?? 0).toFixed(2)} · `, n.task_id ? h("a", { href: `#/tasks/${n.task_id}` }, `#${n.task_id}`) : "", " ", n.instruction || ""));
  return [
    h("h1", {}, `Task #${task.id}`),
    h("p", {}, h("a", { href: `#/d/${enc(task.dataset)}/tasks` }, `tasks of ${task.dataset}`)),
    taskCard(task, (edited) => { location.hash = `#/tasks/${edited.id}`; }),
    h("h2", {}, "Nearest in the pool"), nearest.length ? h("ul", {}, nearest) : h("p", { class: "muted" }, "None recorded."),
    h("h2", {}, "Lineage"), h("pre", {}, JSON.stringify(task.lineage, null, 2)),
  ];
}

async function jobsView() {
  const jobs = await api("GET", "/v1/fine_tuning/jobs?limit=100");
  const rows = jobs.data.map((j) =>
    h("tr", {},
      h("td", {}, h("a", { href: `#/jobs/${enc(j.id)}` }, j.id)),
      h("td", {}, badge(j.status)),
      h("td", {}, j.model),
      h("td", {}, j.dataset || j.training_file || ""),
      h("td", {}, j.fine_tuned_model || "–"),
      h("td", {}, when(j.created_at)),
    ));
  return [
    h("h1", {}, "Fine-tune jobs"),
    rows.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["Job", "Status", "Base model", "Data", "Fine-tuned model", "Created"].map((c) => h("th", {}, c)))), h("tbody", {}, rows))
      : h("p", { class: "muted" }, "No jobs yet. Start one from a dataset's page."),
  ];
}

async function jobView(id) {
  let job = await api("GET", `/v1/fine_tuning/jobs/${enc(id)}`);
  const status = h("span", { id: "job-status" }, badge(job.status));
  const summary = h("div", { class: "counters", id: "job-summary" });
  const chart = h("div", { id: "loss-chart" });
  const events = h("div", { class: "events", id: "job-events" });
  const train = [], evals = [];
  const cancel = h("button", { type: "button", class: "danger", onclick: async () => {
    try { job = await api("POST", `/v1/fine_tuning/jobs/${enc(job.id)}/cancel`); render(); }
    catch (error) { alert(error.message); }
  } }, "Cancel job");
  const message = h("p", { class: "form-error", id: "job-error" });
  const render = () => {
    status.replaceChildren(badge(job.status));
    message.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
    const p = job.progress || {};
    summary.replaceChildren(
      counter("step", p.step), counter("total steps", p.total_steps, "total_steps"),
      counter("trained tokens", job.trained_tokens, "trained_tokens"),
      h("div", { class: "counter text" }, h("b", {}, job.fine_tuned_model || "–"), h("span", {}, "fine-tuned model")));
    chart.replaceChildren(lossChart(train, evals));
    cancel.disabled = FINAL_JOB.has(job.status);
  };
  render();
  follow(`/v1/fine_tuning/jobs/${enc(job.id)}/events?stream=true`, {
    event: async (e) => {
      const d = e.data || {};
      if (d.type === "step" && Number.isFinite(d.train_loss)) train.push([d.step, d.train_loss]);
      if (d.type === "eval" && Number.isFinite(d.eval_loss)) evals.push([d.step, d.eval_loss]);
      events.prepend(h("pre", { "data-level": e.level }, `${when(e.created_at)}  ${e.message}`));
      if (d.type !== "step") {
        job = await api("GET", `/v1/fine_tuning/jobs/${enc(job.id)}`); // status lives on the job
      } else {
        job.progress = { ...(job.progress || {}), step: d.step, total_steps: d.total_steps };
        job.status = "running";
      }
      render();
    },
    done: () => FINAL_JOB.has(job.status),
    ended: async () => {
      job = await api("GET", `/v1/fine_tuning/jobs/${enc(job.id)}`);
      render();
      return FINAL_JOB.has(job.status);
    },
  });
  return [
    h("h1", { class: "row" }, `Job ${job.id} `, status, h("span", { class: "spacer" }), cancel),
    h("p", { class: "muted" }, `${job.model}`, job.dataset ? ` · dataset ${job.dataset}` : ""),
    message,
    summary,
    h("div", { class: "card" }, h("h2", {}, "Loss"), chart),
    h("div", { class: "card" }, h("h2", {}, "Events"), events),
  ];
}

// --- evaluations -----------------------------------------------------------------------------

async function evaluationsView() {
  const [list, ids, datasets] = await Promise.all([
    api("GET", "/v1/evaluations"), modelIds(), api("GET", "/v1/datasets")]);
  const optional = () => [h("option", { value: "" }, "none"), ...modelOptions(ids)];
  const form = apiForm(
    { class: "inline", id: "evaluation-form" },
    [
      field("Dataset", h("select", { name: "dataset" }, datasets.data.map((d) => h("option", { value: d.name }, d.name)))),
      field("Model", h("select", { name: "model_a" }, modelOptions(ids))),
      field("Second model", h("select", { name: "model_b" }, optional())),
      field("Judge", h("select", { name: "judge" }, optional())),
      field("Split", h("select", { name: "split" }, [["", "default"], ["held_out", "held out"], ["train", "train"], ["all", "all"]].map(([v, t]) => h("option", { value: v }, t)))),
      field("Tasks", numberInput("limit", { value: 20, min: 1 })),
    ],
    "Evaluate",
    ({ model_a, model_b, ...body }) => api("POST", "/v1/evaluations", { ...body, models: [model_a, model_b].filter(Boolean) }),
    (created) => { location.hash = `#/evaluations/${created.id}`; },
  );
  const rows = list.data.map((e) =>
    h("tr", {},
      h("td", {}, h("a", { href: `#/evaluations/${e.id}` }, `#${e.id}`)),
      h("td", {}, badge(e.status)),
      h("td", {}, e.dataset, ` (${e.split})`),
      h("td", {}, e.models.join(" vs ")),
      h("td", {}, e.judge || "–"),
      h("td", {}, when(e.created_at))));
  return [
    h("h1", {}, "Evaluations"),
    h("div", { class: "card" }, h("h2", {}, "New evaluation"), form),
    rows.length
      ? h("table", { id: "evaluations" }, h("thead", {}, h("tr", {}, ["Evaluation", "Status", "Dataset", "Models", "Judge", "Created"].map((c) => h("th", {}, c)))), h("tbody", {}, rows))
      : h("p", { class: "muted" }, "No evaluations yet."),
  ];
}

async function evaluationView(id) {
  let evaluation = await api("GET", `/v1/evaluations/${enc(id)}`);
  const status = h("span", { id: "evaluation-status" }, badge(evaluation.status));
  const progress = h("div", { class: "counters", id: "evaluation-progress" });
  const results = h("div", { id: "evaluation-results" });
  const samples = h("div", { id: "evaluation-samples" });
  const more = h("button", { type: "button", class: "quiet" }, "Load more");
  let cursor = null;
  const cancel = h("button", { type: "button", class: "danger", onclick: async () => {
    try { evaluation = await api("POST", `/v1/evaluations/${enc(id)}/cancel`); render(); }
    catch (error) { alert(error.message); }
  } }, "Cancel");
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
  const render = () => {
    const p = evaluation.progress;
    status.replaceChildren(badge(evaluation.status));
    cancel.disabled = FINAL_RUN.has(evaluation.status);
    const part = (label, done, total) =>
      h("div", { class: "counter text", "data-counter": label }, h("b", {}, `${num(done)} / ${num(total)}`), h("span", {}, label));
    progress.replaceChildren(
      part("answers", p.answers, p.answers_total),
      evaluation.judge ? part("ratings", p.ratings, p.ratings_total) : "",
      p.comparisons_total ? part("comparisons", p.comparisons, p.comparisons_total) : "");
    const table = h("table", {}, h("thead", {}, h("tr", {}, ["Model", "Answered", "ROUGE-L", "Failed", "A", "B", "C", "D", "Unjudged"].map((c) => h("th", {}, c)))),
      h("tbody", {}, evaluation.results.map((r) => h("tr", {},
        h("td", {}, r.model), h("td", {}, num(r.answered)),
        h("td", {}, r.mean_rouge_l === null ? "–" : r.mean_rouge_l.toFixed(3)), h("td", {}, num(r.failed)),
        ...["A", "B", "C", "D"].map((k) => h("td", {}, r.ratings ? num(r.ratings[k]) : "–")),
        h("td", {}, r.unjudged === null || r.unjudged === undefined ? "–" : num(r.unjudged))))));
    const pairs = evaluation.pairwise.map((q) => h("p", { class: "pairwise" },
      `${q.model_a} vs ${q.model_b}: ${q.wins_a} wins, ${q.wins_b} losses, ${q.ties} ties of ${q.compared}; `,
      `win rate ${pct(q.win_rate_a)} (95% Wilson ${pct(q.ci_low)}–${pct(q.ci_high)}; judged in both orders)`));
    results.replaceChildren(table, ...pairs);
    if (evaluation.error) results.append(h("p", { class: "form-error" }, evaluation.error));
  };
  const loadSamples = async () => {
    const page = await api("GET", `/v1/evaluations/${enc(id)}/samples?limit=20${cursor ? `&after=${cursor}` : ""}`);
    for (const sample of page.data) {
      samples.append(h("div", { class: "task", "data-sample": sample.position },
        h("div", { class: "instruction" }, sample.instruction),
        sample.input && h("pre", {}, `Input: ${sample.input}`),
        h("pre", {}, `Reference: ${sample.reference}`),
        h("div", { class: "side-by-side" }, ...evaluation.models.map((m) => {
          const a = sample.answers[m];
          return h("div", { class: "answer" },
            h("b", {}, m),
            h("pre", {}, a ? a.text : "(not answered yet)"),
            a && h("span", { class: "muted" },
              a.rouge_l === null ? `failed: ${a.error ?? "no answer"} (asked again on resume)` : `ROUGE-L ${a.rouge_l.toFixed(2)}`,
              a.rating !== undefined ? ` · rating ${a.rating ?? "unjudged"}` : "",
              a.rationale ? ` · ${a.rationale}` : ""));
        })),
        ...Object.entries(sample.pairwise).map(([pair, v]) => h("p", { class: "muted" }, `${pair.replace("|", " vs ")}: ${v.winner ?? "no verdict"}`))));
    }
    cursor = page.next_cursor;
    more.hidden = !page.has_more;
  };
  more.addEventListener("click", loadSamples);
  render();
  await loadSamples();
  follow(`/v1/evaluations/${enc(id)}/events`, {
    progress: (e) => { evaluation.progress = e.data; evaluation.status = "running"; render(); },
    end: async () => {
      evaluation = await api("GET", `/v1/evaluations/${enc(id)}`);
      render();
      samples.replaceChildren(); // the answers are all in now
      cursor = null;
      await loadSamples();
    },
    done: () => FINAL_RUN.has(evaluation.status),
  });
  return [
    h("h1", { class: "row" }, `Evaluation #${evaluation.id} `, status, h("span", { class: "spacer" }), cancel),
    h("p", { class: "muted" }, `${evaluation.dataset} (${evaluation.split}, ${evaluation.tasks} tasks)`, evaluation.judge ? ` · judge ${evaluation.judge}` : ""),
    progress,
    h("div", { class: "card" }, h("h2", {}, "Results"), results),
    h("div", { class: "card" }, h("h2", {}, "Answers side by side"), samples, more),
  ];
}

// --- recipes -----------------------------------------------------------------------------------

/** Where the dashboard has a page for a child's kind; judgements and versions have none. */
const CHILD_PAGE = { run: (id) => `#/runs/${id}`, finetune: (id) => `#/jobs/${enc(id)}`, evaluation: (id) => `#/evaluations/${id}` };

function childCell(job) {
  if (!job) return h("td", { class: "muted" }, "not started");
  const label = `${job.kind} ${job.kind === "finetune" ? job.id : `#${job.id}`}`;
  const page = CHILD_PAGE[job.kind];
  return h("td", {}, page ? h("a", { href: page(job.id) }, label) : label);
}

async function recipesView() {
  const list = await api("GET", "/v1/recipes");
  const rows = list.data.map((r) =>
    h("tr", { "data-recipe": r.id },
      h("td", {}, h("a", { href: `#/recipes/${r.id}` }, `#${r.id}`)),
      h("td", {}, r.name),
      h("td", {}, badge(r.status)),
      h("td", {}, h("a", { href: `#/d/${enc(r.dataset)}` }, r.dataset)),
      h("td", {}, `${Math.min(r.round, r.rounds)} / ${r.rounds}`),
      h("td", {}, r.step || r.stop_reason || "–"),
      h("td", {}, when(r.created_at))));
  return [
    h("h1", {}, "Recipes"),
    h("p", { class: "muted" }, "Post a recipe (JSON or YAML) to /v1/recipes or run `selfinstruct recipe run FILE`; it shows here."),
    rows.length
      ? h("table", { id: "recipes" }, h("thead", {}, h("tr", {}, ["Recipe", "Name", "Status", "Dataset", "Round", "Step", "Created"].map((c) => h("th", {}, c)))), h("tbody", {}, rows))
      : h("p", { class: "muted" }, "No recipes yet."),
  ];
}

async function recipeView(id) {
  let recipe = await api("GET", `/v1/recipes/${enc(id)}`);
  const status = h("span", { id: "recipe-status" }, badge(recipe.status));
  const where = h("p", { class: "muted", id: "recipe-where" });
  const message = h("p", { class: "form-error", id: "recipe-error" });
  const steps = h("tbody", { id: "recipe-steps" });
  const versions = h("p", { id: "recipe-versions" });
  const table = h("tbody", { id: "recipe-rounds" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-recipe", onclick: async () => {
    try { recipe = await api("POST", `/v1/recipes/${enc(id)}/cancel`); render(); }
    catch (error) { message.textContent = error.message; }
  } }, "Cancel recipe");
  const fixed = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
  const render = () => {
    status.replaceChildren(badge(recipe.status));
    cancel.disabled = FINAL_RUN.has(recipe.status);
    where.textContent = [
      `round ${Math.min(recipe.round, recipe.rounds)} of ${recipe.rounds}`,
      recipe.step && `at step ${recipe.step}`,
      recipe.stop_reason && `stopped: ${recipe.stop_reason}`,
    ].filter(Boolean).join(" · ");
    message.textContent = recipe.error || "";
    steps.replaceChildren(...recipe.steps.map((st) =>
      h("tr", { "data-step": `${st.round}:${st.name}` },
        h("td", {}, st.round), h("td", {}, st.name), h("td", {}, st.kind),
        childCell(st.job),
        h("td", {}, st.job ? badge(st.job.status) : "–"),
        h("td", {}, st.job?.error || ""))));
    versions.replaceChildren(recipe.versions.length
      ? `Versions made: ${recipe.versions.map((v) => `#${v}`).join(", ")} (GET /v1/datasets/${recipe.dataset}/versions/{id})`
      : "No versions made yet.");
    table.replaceChildren(...recipe.table.map((r) =>
      h("tr", { "data-round": r.round },
        h("td", {}, r.round), h("td", {}, num(r.new_tasks)), h("td", {}, r.version ? `#${r.version}` : "–"),
        h("td", {}, r.tuned_model || "–"), h("td", {}, r.against || "–"),
        h("td", {}, r.win_rate === null ? "–" : `${pct(r.win_rate)} (${pct(r.ci_low)}–${pct(r.ci_high)}, n=${r.compared})`),
        h("td", {}, fixed(r.mean_rouge_l_to_pool)), h("td", {}, fixed(r.distinct_leading_words)),
        h("td", {}, num(r.requests)), h("td", {}, num(r.tokens)), h("td", {}, money(r.cost)),
        h("td", {}, r.stop || "–"))));
  };
  // Events say when the recipe moves; the GET holds the whole picture, so each event rereads it.
  // A running child's own status changes send no recipe event: a slow reread covers those.
  let reading = null;
  const reread = () => {
    reading ??= api("GET", `/v1/recipes/${enc(id)}`)
      .then((fresh) => { recipe = fresh; render(); })
      .finally(() => { reading = null; });
    return reading;
  };
  render();
  const timer = setInterval(() => { if (!FINAL_RUN.has(recipe.status)) reread(); }, 2000);
  cleanups.push(() => clearInterval(timer));
  follow(`/v1/recipes/${enc(id)}/events`, {
    status: reread, child_created: reread, step_done: reread, round: reread,
    end: async () => { await reading; await reread(); },
    done: () => FINAL_RUN.has(recipe.status),
    ended: async () => { await reread(); return FINAL_RUN.has(recipe.status); },
  });
  const head = (cols) => h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c))));
  return [
    h("h1", { class: "row" }, `Recipe #${recipe.id} ${recipe.name} `, status, h("span", { class: "spacer" }), cancel),
    h("p", { class: "muted" }, "dataset ", h("a", { href: `#/d/${enc(recipe.dataset)}` }, recipe.dataset)),
    where,
    message,
    h("div", { class: "card" }, h("h2", {}, "Steps"),
      h("table", {}, head(["Round", "Step", "Kind", "Job", "Status", "Error"]), steps)),
    h("div", { class: "card" }, h("h2", {}, "Versions"), versions),
    h("div", { class: "card" }, h("h2", {}, "Rounds"),
      h("table", {}, head(["Round", "New tasks", "Version", "Tuned model", "Against", "Win rate (95% CI)", "ROUGE-L to pool", "Distinct leading words", "Requests", "Tokens", "Cost", "Stopped by"]), table)),
  ];
}

// --- routing ---------------------------------------------------------------------------------

const routes = [
  [/^#?\/?$/, datasetsView],
  [/^#\/d\/([^/?]+)$/, (m) => datasetView(decodeURIComponent(m[1]))],
  [/^#\/d\/([^/?]+)\/stats$/, (m) => statsView(decodeURIComponent(m[1]))],
  [/^#\/d\/([^/?]+)\/tasks(?:\?(.*))?$/, (m) => tasksView(decodeURIComponent(m[1]), new URLSearchParams(m[2] || ""))],
  [/^#\/tasks\/(\d+)$/, (m) => taskView(m[1])],
  [/^#\/runs\/(\d+)$/, (m) => runView(m[1])],
  [/^#\/jobs$/, jobsView],
  [/^#\/evaluations$/, evaluationsView],
  [/^#\/evaluations\/(\d+)$/, (m) => evaluationView(m[1])],
  [/^#\/jobs\/([^/?]+)$/, (m) => jobView(decodeURIComponent(m[1]))],
  [/^#\/recipes$/, recipesView],
  [/^#\/recipes\/(\d+)$/, (m) => recipeView(m[1])],
];

async function route() {
  const current = ++navigation;
  cleanups.forEach((close) => close());
  cleanups = [];
  const hash = location.hash || "#/";
  for (const [pattern, render] of routes) {
    const match = hash.match(pattern);
    if (!match) continue;
    let content;
    try {
      content = [await render(match)].flat();
    } catch (error) {
      content = [h("h1", {}, "Something went wrong"), h("p", { class: "form-error", role: "alert" }, error.message)];
    }
    if (current !== navigation) return; // the user moved on; that view's streams are closed
    view.replaceChildren(...content);
    view.dataset.ready = hash;
    return;
  }
  view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Datasets")));
  view.dataset.ready = hash;
}

window.addEventListener("hashchange", route);
route();
