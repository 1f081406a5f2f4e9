"use strict";
// The try-it page: every chosen, dropped or photographed image is sent to POST /predict (verdict,
// probability, threshold, model) and then to POST /explain (PNG with the heat map, verdict in
// X-* headers). Explanations run one at a time: the server admits only a few at once (429 beyond).
// Errors are shown as the API words them: "<status>: <error>".

const $ = (selector, root = document) => root.querySelector(selector);
const explainQueue = [];
let explaining = false;
let cameraStream = null;
let shots = 0;

async function apiError(resp) {
  try {
    const body = await resp.json();
    if (body && typeof body.error === "string") return `${body.status || resp.status}: ${body.error}`;
  } catch (_) { /* not JSON: fall through */ }
  return `${resp.status}: ${resp.statusText || "request failed"}`;
}

function postImage(path, file) {
  const form = new FormData();
  form.append("image", file, file.name || "photo");
  return fetch(path, { method: "POST", body: form });
}

async function loadModel() {
  try {
    const resp = await fetch("/model");
    if (!resp.ok) throw new Error(await apiError(resp));
    const card = await resp.json();
    $("#model-tag").textContent = card.tag;
    $("#model-threshold").textContent = Number(card.threshold).toFixed(3);
  } catch (err) {
    showPageError(`cannot read the served model: ${err.message}`);
  }
}

function showPageError(message) {
  const el = $("#page-error");
  el.textContent = message;
  el.hidden = false;
}

function addCard(file) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".name", card).textContent = file.name || "photo";
  $(".verdict", card).textContent = "asking the model…";
  $("#results").prepend(card);
  return card;
}

function showError(card, message) {
  const el = $(".error", card);
  el.textContent = message;
  el.hidden = false;
  card.dataset.state = card.dataset.state === "done" ? "done" : "error";
}

function showVerdict(card, file, result) {
  const p = Number(result.probability);
  const t = Number(result.threshold);
  const verdict = $(".verdict", card);
  verdict.dataset.verdict = result.verdict;
  verdict.textContent = result.verdict === "glasses" ? "glasses" : "no glasses";
  $(".fill", card).style.width = `${(p * 100).toFixed(1)}%`;
  $(".fill", card).classList.toggle("positive", result.verdict === "glasses");
  $(".threshold-mark", card).style.left = `${(t * 100).toFixed(1)}%`;
  $(".bar", card).setAttribute("aria-label", `P(glasses) ${p.toFixed(3)} against threshold ${t.toFixed(3)}`);
  $(".bar", card).hidden = false;  // no bar before a verdict, none for a refused upload
  $(".numbers", card).textContent = `P(glasses) = ${p.toFixed(3)} · threshold ${t.toFixed(3)}`;
  $(".tag", card).textContent = `model ${result.model}`;
  const thumb = $(".thumb", card);
  thumb.src = URL.createObjectURL(file);
  thumb.hidden = false;
  if (result.face) showFace(card, thumb, result.face);
  card.dataset.state = "verdict";
}

// The face the model looked at (versions that frame faces): a box over the thumbnail and a line.
function showFace(card, thumb, face) {
  const [x0, y0, x1, y1] = face.box.map(Number);
  $(".face", card).textContent = `face found (detector score ${Number(face.score).toFixed(2)}): ` +
    `${Math.round(x1 - x0)} × ${Math.round(y1 - y0)} px at (${Math.round(x0)}, ${Math.round(y0)})`;
  thumb.addEventListener("load", () => {
    const box = $(".face-box", card);
    const w = thumb.naturalWidth, h = thumb.naturalHeight;
    if (!w || !h) return;
    box.style.left = `${(Math.max(x0, 0) / w) * 100}%`;
    box.style.top = `${(Math.max(y0, 0) / h) * 100}%`;
    box.style.width = `${((Math.min(x1, w) - Math.max(x0, 0)) / w) * 100}%`;
    box.style.height = `${((Math.min(y1, h) - Math.max(y0, 0)) / h) * 100}%`;
    box.hidden = false;
  }, { once: true });
}

async function predict(card, file) {
  try {
    const resp = await postImage("/predict", file);
    if (!resp.ok) {
      $(".verdict", card).textContent = "no verdict";
      showError(card, await apiError(resp));
      return false;
    }
    showVerdict(card, file, await resp.json());
    return true;
  } catch (err) {
    showError(card, `the service did not answer: ${err.message}`);
    return false;
  }
}

async function explain(card, file) {
  const figure = $(".explanation", card);
  const caption = $("figcaption", figure);
  try {
    const resp = await postImage("/explain", file);
    if (!resp.ok) {
      showError(card, `explanation: ${await apiError(resp)}`);
      card.dataset.state = "done";
      return;
    }
    const overlay = $(".overlay", figure);
    overlay.src = URL.createObjectURL(await resp.blob());
    const peak = (resp.headers.get("X-Explain-Peak") || "").split(",").map(Number);
    const said = resp.headers.get("X-Verdict") === "glasses" ? "glasses" : "no glasses";
    caption.textContent = `What drove "${said}" (occlusion map of the served model)` +
      (peak.length === 2 ? `: the hottest spot is ${(peak[1] * 100).toFixed(0)} % of the way down` : "");
    figure.hidden = false;
    card.dataset.state = "done";
  } catch (err) {
    showError(card, `explanation: the service did not answer: ${err.message}`);
    card.dataset.state = "done";
  }
}

async function drainExplanations() {
  if (explaining) return;
  explaining = true;
  while (explainQueue.length) {
    const [card, file] = explainQueue.shift();
    await explain(card, file);
  }
  explaining = false;
}

async function handle(file) {
  const card = addCard(file);
  if (await predict(card, file)) {
    explainQueue.push([card, file]);
    drainExplanations();
  }
}

function handleFiles(files) {
  for (const file of Array.from(files)) handle(file);
}

function setUpDrop() {
  const zone = $("#drop");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    handleFiles(event.dataTransfer.files);
  });
  $("#files").addEventListener("change", (event) => {
    handleFiles(event.target.files);
    event.target.value = "";
  });
}

function setUpCamera() {
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) return; // not here (e.g. plain http)
  const start = $("#camera-start");
  start.hidden = false;
  start.addEventListener("click", async () => {
    try {
      cameraStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      $("#camera-video").srcObject = cameraStream;
      $("#camera").hidden = false;
      start.hidden = true;
    } catch (err) {
      showPageError(`camera unavailable: ${err.message}`);
    }
  });
  $("#camera-stop").addEventListener("click", stopCamera);
  $("#camera-shoot").addEventListener("click", () => {
    const video = $("#camera-video");
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      if (blob) handle(new File([blob], `camera-${++shots}.jpg`, { type: "image/jpeg" }));
    }, "image/jpeg", 0.92);
  });
}

function stopCamera() {
  if (cameraStream) cameraStream.getTracks().forEach((track) => track.stop());
  cameraStream = null;
  $("#camera").hidden = true;
  $("#camera-start").hidden = false;
}

setUpDrop();
setUpCamera();
loadModel();
