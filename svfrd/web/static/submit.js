"use strict";
// Submit: the form goes to POST /api/jobs (the page's own API); a mask may be drawn on a frame of the video,
// grabbed here from a <video> element, and is sent as a PNG of the frame's size (white = damaged).
const form = document.getElementById("submit-form");
const message = document.getElementById("submit-message");
const videoInput = document.getElementById("video");
const frameSource = document.getElementById("frame-source");
const frameCanvas = document.getElementById("frame"), maskCanvas = document.getElementById("mask");
let maskDrawn = false;

document.getElementById("draw").addEventListener("click", () => {
  const file = videoInput.files[0];
  if (!file) { say("choose the video first", true); return; }
  frameSource.src = URL.createObjectURL(file);
  frameSource.addEventListener("loadeddata", () => { frameSource.currentTime = Math.min(0.5, frameSource.duration / 2 || 0); }, { once: true });
  frameSource.addEventListener("seeked", () => {
    for (const canvas of [frameCanvas, maskCanvas]) { canvas.width = frameSource.videoWidth; canvas.height = frameSource.videoHeight; }
    frameCanvas.getContext("2d").drawImage(frameSource, 0, 0);
    clearMask();
    document.getElementById("canvas-box").hidden = false;
    document.getElementById("clear-mask").hidden = false;
  }, { once: true });
});
function clearMask() {
  const ctx = maskCanvas.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, maskCanvas.width, maskCanvas.height);
  maskDrawn = false;
}
document.getElementById("clear-mask").addEventListener("click", clearMask);
let painting = false;
function paint(event) {
  if (!painting) return;
  const box = maskCanvas.getBoundingClientRect();
  const x = (event.clientX - box.left) * maskCanvas.width / box.width;
  const y = (event.clientY - box.top) * maskCanvas.height / box.height;
  const radius = Number(document.getElementById("brush").value) * maskCanvas.width / box.width / 2;
  const ctx = maskCanvas.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.beginPath(); ctx.arc(x, y, radius, 0, 2 * Math.PI); ctx.fill();
  maskDrawn = true;
}
maskCanvas.addEventListener("pointerdown", e => { painting = true; maskCanvas.setPointerCapture(e.pointerId); paint(e); });
maskCanvas.addEventListener("pointermove", paint);
maskCanvas.addEventListener("pointerup", () => { painting = false; });

function say(text, bad) { message.className = "message" + (bad ? " bad" : ""); message.textContent = text; }
function maskBlob() { return new Promise(resolve => maskCanvas.toBlob(resolve, "image/png")); }

form.addEventListener("submit", async event => {
  event.preventDefault();
  const body = new FormData(form);
  if (!body.get("mask") || !body.get("mask").size) body.delete("mask");
  if (!body.get("reference") || !body.get("reference").size) body.delete("reference");
  if (maskDrawn && !body.has("mask")) body.append("mask", await maskBlob(), "drawn-mask.png");
  const bar = document.getElementById("upload-progress");
  bar.hidden = false; say("uploading…");
  const request = new XMLHttpRequest();  // fetch has no upload progress
  request.open("POST", "/api/jobs");
  request.upload.onprogress = e => { if (e.lengthComputable) bar.value = 100 * e.loaded / e.total; };
  request.upload.onload = () => say("uploaded; waiting for the service to take it…");
  request.onload = () => {
    let data = {};
    try { data = JSON.parse(request.responseText); } catch (e) { data = { error: "the server answered " + request.status }; }
    if (request.status === 201) { location.href = data.urls.page; return; }
    if (request.status === 202) { say(printable(data.message)); return; }
    say(printable(data.error || ("the server answered " + request.status)), true);
  };
  request.onerror = () => say("the upload failed: the connection broke; try again", true);
  request.send(body);
});
