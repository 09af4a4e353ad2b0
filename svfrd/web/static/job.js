"use strict";
// The job page: live state, cancel and retry, and the before/after videos kept in sync (the result leads).
const facts = document.getElementById("job");
const jobId = Number(facts.dataset.jobId);
const message = document.getElementById("action-message");
let shownState = facts.querySelector(".state").textContent;
listenForJobs(job => {
  if (job.id !== jobId) return;
  showProgress(facts, job);
  document.getElementById("cancel").hidden = !["queued", "running"].includes(job.state);
  document.getElementById("retry").hidden = !["failed", "cancelled"].includes(job.state);
  // A page opened before the job finished has no results to show yet: offer them rather than reload.
  if (job.state !== shownState && job.state === "done") document.getElementById("show-results").hidden = false;
  shownState = job.state;
});
for (const button of document.querySelectorAll("button[data-action]")) {
  button.addEventListener("click", async () => {
    const answer = await postJson(`/api/jobs/${jobId}/${button.dataset.action}`);
    message.className = "message" + (answer.ok ? "" : " bad");
    message.textContent = answer.ok ? `job ${jobId} is ${answer.data.state}` : printable(answer.data.error);
  });
}
const before = document.getElementById("before"), after = document.getElementById("after");
if (before && after) {
  const follow = () => { if (Math.abs(before.currentTime - after.currentTime) > 0.05) before.currentTime = after.currentTime; };
  after.addEventListener("play", () => { follow(); before.play().catch(() => {}); });
  after.addEventListener("pause", () => { before.pause(); follow(); });
  after.addEventListener("seeked", follow);
  after.addEventListener("ratechange", () => { before.playbackRate = after.playbackRate; });
  after.addEventListener("timeupdate", follow);
}
