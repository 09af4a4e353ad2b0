"use strict";
// The queue updates itself from the event stream: a job's row moves to the section of its state.
function sectionFor(state) { return state === "running" ? "running" : state === "queued" ? "queued" : "recent"; }
function newRow(job) {
  const row = document.createElement("tr");
  row.dataset.jobId = job.id;
  for (const cls of ["id", "name", "tasks", "state", "priority", "stage", "progress", "eta"]) {
    const cell = document.createElement("td"); cell.className = cls; row.appendChild(cell);
  }
  for (const cls of ["id", "name"]) {
    const link = document.createElement("a"); link.href = job.urls.page; row.querySelector("." + cls).appendChild(link);
  }
  row.querySelector(".id a").textContent = job.id;
  row.querySelector(".name a").textContent = printable(job.name);
  row.querySelector(".tasks").textContent = job.tasks.join("+");
  const bar = document.createElement("progress"); bar.max = 100;
  const percent = document.createElement("span"); percent.className = "percent";
  row.querySelector(".progress").append(bar, " ", percent);
  return row;
}
listenForJobs(job => {
  let row = document.querySelector(`tr[data-job-id="${job.id}"]`);
  if (!row) row = newRow(job);
  row.className = "state-" + job.state;
  showProgress(row, job);
  const body = document.querySelector(`#${sectionFor(job.state)} tbody`);
  if (row.parentElement !== body) {
    if (sectionFor(job.state) === "queued") body.appendChild(row); else body.prepend(row);
  }
});
