"use strict";
// Shared by the pages: names shown safely, job rows, and the event stream (GET /api/events): jobs and the pause line.
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
function printable(text) {  // as svfrd.ops.printable: control and bidi characters as escapes
  return String(text).replace(UNSAFE, c => c === "\n" ? "\\n" : "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}
function percentText(job) { return job.percent === null ? "-" : job.percent + "%"; }
function etaText(job) { return job.eta_seconds === null ? "-" : Math.round(job.eta_seconds) + " s"; }
function setText(root, selector, text) { const el = root.querySelector(selector); if (el) el.textContent = text; }
function showProgress(root, job) {
  setText(root, ".state", job.state);
  setText(root, ".priority", job.queue_mark);
  setText(root, ".stage", job.stage || "-");
  setText(root, ".percent", percentText(job));
  setText(root, ".eta", etaText(job));
  const bar = root.querySelector("progress");
  if (bar) { if (job.percent === null) bar.removeAttribute("value"); else bar.value = job.percent; }
}
function listenForJobs(onJob) {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { live.classList.add("on"); live.textContent = "●"; };
  source.onerror = () => { live.classList.remove("on"); live.textContent = "○"; };
  source.addEventListener("job", event => onJob(JSON.parse(event.data)));
  source.addEventListener("service", event => showControl(JSON.parse(event.data)));
  return source;
}
function showControl(service) {  // the pause/schedule line, on the pages that have it
  const line = document.getElementById("control");
  if (!line) return;
  setText(line, ".what", service.control);
  line.hidden = !service.control;
}
async function postJson(url, body) {
  const response = await fetch(url, { method: "POST", body: body, credentials: "same-origin" });
  let data = {};
  try { data = await response.json(); } catch (e) { data = { error: "the server answered " + response.status }; }
  return { ok: response.ok, status: response.status, data: data };
}
