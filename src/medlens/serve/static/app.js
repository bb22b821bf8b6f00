"use strict";
// The worklist page. Every value from the API (header values, failure reasons, model names) is untrusted:
// the DOM is built with createElement and textContent only, never from HTML strings (the CSP forbids inline script).
let token = sessionStorage.getItem("medlens-token") || "";
const fmt = (x) => (x === null || x === undefined) ? "–" : (typeof x === "number" ? x.toFixed(3) : String(x));
const $ = (selector) => document.querySelector(selector);

function el(tag, text, className) {  // an element holding text; never parsed as HTML
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {  // cells: [text, className?] pairs or plain texts
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const [text, className] = Array.isArray(cell) ? cell : [cell, ""];
    tr.appendChild(el("td", text, className));
  }
  return tr;
}

async function api(path, options = {}) {
  const response = await fetch(path, {...options, headers: {...(options.headers || {}), "Authorization": "Bearer " + token}});
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).detail || response.statusText);
  return response;
}

async function imageUrl(path) {  // images need the token too: fetch, then show as a blob
  return URL.createObjectURL(await (await api(path)).blob());
}

const STATES = new Set(["queued", "running", "done", "referred", "not-assessed", "failed", "skipped"]);

function findingText(job) {
  const finding = job.result && job.result.findings ? job.result.findings[0] : null;
  if (finding) return [finding.name + (finding.present ? " present" : " absent"), finding.present ? "present" : ""];
  if (job.result && job.result.assessed === false) return ["not assessed: outside what the model was trained on", ""];
  if (job.result && job.result.counts) {
    return [Object.entries(job.result.counts).map(([n, c]) => `${n} ${c}`).join(", "), ""];
  }
  if (job.result && job.result.volumes_ml) {
    return [Object.entries(job.result.volumes_ml).map(([n, ml]) => `${n} ${Number(ml).toFixed(2)} mL`).join(", "), ""];
  }
  return ["–", ""];
}

async function showWorklist() {
  const jobs = (await (await api("/api/worklist")).json()).filter((j) => j.state !== "skipped");
  const body = $("#worklist tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const finding = job.result && job.result.findings ? job.result.findings[0] : null;
    const tr = row([job.id, [job.state, STATES.has(job.state) ? job.state : ""], job.model, findingText(job),
                    finding ? fmt(finding.probability) : "–", fmt(job.urgency)]);
    tr.className = "job";
    tr.dataset.job = String(job.id);
    tr.addEventListener("click", () => showStudy(job.id));
    body.appendChild(tr);
  }
  const agreement = await (await api("/api/agreement")).json();
  $("#agreement tbody").replaceChildren(...agreement.rows.map((r) =>
    row([r.model, r.finding, r.n, fmt(r.agreement), fmt(r.kappa), fmt(r.sensitivity), fmt(r.specificity)])));
  showMonitoring().catch(() => {});  // not awaited: the first report reads each model's validation images (seconds)
}

async function showMonitoring() {
  const monitoring = await (await api("/api/monitoring")).json();
  $("#monitoring tbody").replaceChildren(...Object.entries(monitoring).map(([name, m]) => {
    const w = m.windows.length ? m.windows[m.windows.length - 1] : null;
    const status = m.reference === null ? m.note : (m.alarm ? "DRIFT ALARM" : (w ? "no alarm" : `waiting for ${m.window} studies`));
    return row([name, m.studies, w ? `jobs ${w.first_job}-${w.last_job}` : "–",
                w && w.embedding_score !== undefined ? fmt(w.embedding_score) + " / " + fmt(m.reference.alarm_embedding) : "–",
                w ? fmt(w.mean_probability) : "–", [status, m.alarm ? "present" : ""]]);
  }));
}

async function showStudy(id) {
  document.querySelectorAll("tr.job").forEach((r) => r.classList.toggle("selected", r.dataset.job === String(id)));
  const job = await (await api(`/api/jobs/${encodeURIComponent(id)}`)).json();
  $("#study").hidden = false;
  $("#study-title").textContent = `Job ${job.id}: ${job.model} (${job.state})`;
  $("#image").src = job.result && job.result.key_image ? await imageUrl(`/api/jobs/${job.id}/image.png`) : "";
  const outputs = (job.result && job.result.outputs) || {};
  $("#heatmap").src = outputs.heatmap ? await imageUrl(`/api/jobs/${job.id}/heatmap.png`)
    : (outputs.overlay ? await imageUrl(`/api/jobs/${job.id}/overlay.png`) : "");
  const findings = job.result && job.result.findings ? job.result.findings : [];
  const items = findings.map((f) => el("li", `${f.name}: ${f.present ? "present" : "absent"} (probability ${fmt(f.probability)}, ` +
                                             `threshold ${fmt(f.threshold)})`, f.present ? "present" : ""));
  if (job.result && job.result.refer) items.push(el("li", "uncertain: needs a radiologist's read", "referred"));
  if (job.result && job.result.assessed === false) items.push(el("li", "not assessed: outside what the model was trained on", "referred"));
  for (const [name, ml] of Object.entries((job.result && job.result.volumes_ml) || {})) {
    items.push(el("li", `${name}: ${fmt(ml)} mL (DICOM SEG stored)`));
  }
  for (const [name, count] of Object.entries((job.result && job.result.counts) || {})) {
    items.push(el("li", `${name}: ${count} found (boxes drawn on the image, DICOM SR stored)`));
  }
  if (job.reason) items.push(el("li", job.reason, "note"));
  $("#findings").replaceChildren(...items);
  const buttons = $("#read-buttons");
  buttons.replaceChildren();
  for (const f of findings) {
    for (const [label, present] of [[`Agree: ${f.name} ${f.present ? "present" : "absent"}`, f.present],
                                    [`Disagree: ${f.name} ${f.present ? "absent" : "present"}`, !f.present]]) {
      const button = el("button", label);
      button.addEventListener("click", () => recordRead(job.id, f.name, present));
      buttons.appendChild(button);
    }
  }
  $("#read-status").textContent = "";
}

async function recordRead(id, finding, present) {
  try {
    await api(`/api/jobs/${id}/reads`, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({finding, present})});
    $("#read-status").textContent = `Read recorded: ${finding} ${present ? "present" : "absent"}.`;
    await showWorklist();
  } catch (error) {
    $("#read-status").textContent = `Not recorded: ${error.message}`;
  }
}

async function signIn() {
  token = $("#token").value.trim() || token;
  try {
    await showWorklist();
  } catch (error) {
    $("#login-error").textContent = error.message;
    return;
  }
  sessionStorage.setItem("medlens-token", token);
  $("#login").hidden = true;
  $("#app").hidden = false;
  setInterval(() => showWorklist().catch(() => {}), 5000);
}

$("#signin").addEventListener("click", signIn);
if (token) signIn();
