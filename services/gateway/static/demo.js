// The storefront demo: a shopper's photo registered once (POST /v1/persons), one garment tried on
// click (POST /v1/tryon with person_id), the whole catalogue at once (POST /v1/tryon/batch), results
// filled in as they finish. Only the public API, with the key typed in: what any storefront could do.
"use strict";

const $ = (id) => document.getElementById(id);

// What a shopper should read for each error code (docs/API.md lists the codes); the API's own
// message is for developers and goes to the console.
const FRIENDLY = {
  no_person_detected: "We couldn't find a person in this photo. Try one where you are standing and facing the camera.",
  category_unsupported: "This photo doesn't show enough of the front of you for this garment. Try a photo facing the camera that shows more of you.",
  image_invalid: "We couldn't open this picture. Try a JPEG or PNG photo.",
  unsupported_media_type: "We can't read this kind of file. Try a JPEG or PNG photo.",
  image_too_large: "This picture is too large. Try a smaller one.",
  request_too_large: "This picture is too large. Try a smaller one.",
  garment_not_detected: "We couldn't make out a garment in that picture. Try a product photo on a plain background.",
  category_uncertain: "We couldn't tell what kind of garment this is.",
  garment_not_found: "This garment is no longer in the catalogue.",
  person_not_found: "Your photo has expired. Please add it again.",
  unauthorized: "This API key isn't valid. Check it and try again.",
  queue_full: "The fitting room is busy right now. Please try again in a moment.",
  batch_too_large: "That's too many garments at once.",
};
const FALLBACK = "Something went wrong on our side. Please try again in a moment.";

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const state = {
  key: "",
  personId: null,
  garments: [], // {id, sku, category}
  tiles: new Map(), // garment id -> tile element
  selectedJob: null,
};

function friendly(error) {
  if (error instanceof ApiError) {
    console.warn(`fitroom ${error.status} ${error.code}: ${error.message}`);
    return FRIENDLY[error.code] || FALLBACK;
  }
  console.error(error);
  return FALLBACK;
}

function say(text, ok = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("ok", ok);
  box.hidden = !text;
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let body = {};
    try {
      body = await response.json();
    } catch (_) {
      // not JSON: keep the fallback
    }
    const error = body.error || {};
    throw new ApiError(error.code || "internal_error", error.message || response.statusText, response.status);
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

function postJson(path, body) {
  return json(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// <img> cannot send the API key: images are fetched with it and shown from blob: URLs.
async function imageUrl(path) {
  const blob = await (await api(path)).blob();
  return URL.createObjectURL(blob);
}

// ------------------------------------------------------------------------------------- catalogue

async function loadCatalogue() {
  const garments = [];
  let after = null;
  do {
    const query = new URLSearchParams({ limit: "100", ...(after ? { after } : {}) });
    const page = await json(`/v1/garments?${query}`);
    garments.push(...page.data);
    after = page.has_more ? page.next_after : null;
  } while (after);
  state.garments = garments;
  state.tiles.clear();
  const grid = $("catalogue");
  grid.replaceChildren();
  for (const garment of garments) {
    grid.append(tile(garment));
  }
  $("catalogue-empty").hidden = garments.length > 0;
  updateButtons();
}

function tile(garment) {
  const element = document.createElement("div");
  element.className = "garment";
  element.dataset.garmentId = garment.id;
  element.title = "Try it on";
  const pair = document.createElement("div");
  pair.className = "pair";
  const product = document.createElement("img");
  product.className = "product";
  product.alt = garment.sku || garment.category;
  const result = document.createElement("img");
  result.className = "tryon-result";
  result.alt = "";
  pair.append(product, result);
  const label = document.createElement("div");
  label.className = "label";
  const name = document.createElement("span");
  name.textContent = garment.sku || garment.category;
  const status = document.createElement("span");
  status.className = "state";
  label.append(name, status);
  element.append(pair, label);
  element.addEventListener("click", () => tryOne(garment.id));
  imageUrl(`/v1/garments/${garment.id}/image`).then((url) => { product.src = url; }, (e) => friendly(e));
  state.tiles.set(garment.id, element);
  return element;
}

function setTileState(garmentId, text, failed = false) {
  const element = state.tiles.get(garmentId);
  if (!element) return;
  const label = element.querySelector(".state");
  label.textContent = text;
  label.classList.toggle("failed", failed);
}

function updateButtons() {
  $("try-all").disabled = !(state.personId && state.garments.length);
}

// ---------------------------------------------------------------------------------------- shopper

async function usePhoto(blob, name) {
  say("");
  state.personId = null;
  updateButtons();
  $("person-status").textContent = "Reading your photo…";
  const preview = $("person-preview");
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("person-placeholder").hidden = true;
  const form = new FormData();
  form.append("person", blob, name);
  try {
    const person = await json("/v1/persons", { method: "POST", body: form });
    state.personId = person.id;
    $("person-status").textContent = "Ready: pick a garment, or try them all.";
    document.body.dataset.personId = person.id;
  } catch (error) {
    $("person-status").textContent = "";
    say(friendly(error));
  }
  updateButtons();
}

// ----------------------------------------------------------------------------------------- try-on

async function tryOne(garmentId) {
  if (!state.personId) {
    say("Add your photo first.");
    return;
  }
  say("");
  setTileState(garmentId, "fitting…");
  try {
    const body = { person_id: state.personId, garment_id: garmentId, intermediates: true };
    let job = await postJson("/v1/tryon", body);
    while (job.status !== "succeeded" && job.status !== "failed") {
      job = await json(`/v1/tryon/${job.id}?wait=20`);
    }
    await settleJob(garmentId, job, true);
  } catch (error) {
    setTileState(garmentId, "");
    say(friendly(error));
  }
}

async function tryAll() {
  if (!state.personId) return;
  say("");
  $("try-all").disabled = true;
  const ids = state.garments.map((g) => g.id);
  for (const id of ids) setTileState(id, "waiting…");
  const shown = new Set();
  try {
    const body = { person_id: state.personId, garment_ids: ids, intermediates: true };
    let batch = await postJson("/v1/tryon/batch", body);
    document.body.dataset.batchId = batch.id;
    for (;;) {
      progress(batch);
      for (const job of batch.jobs) {
        if (shown.has(job.id) || (job.status !== "succeeded" && job.status !== "failed")) continue;
        shown.add(job.id);
        await settleJob(job.garment_id, job, false);
      }
      if (batch.status === "finished") break;
      batch = await json(`/v1/tryon/batch/${batch.id}?wait=2`);
    }
    const failed = batch.counts.failed;
    say(failed ? `${batch.counts.succeeded} of ${batch.total} fitted; ${failed} could not be.` : "", !failed);
  } catch (error) {
    say(friendly(error));
  }
  updateButtons();
}

function progress(batch) {
  const done = batch.counts.succeeded + batch.counts.failed;
  $("progress").max = batch.total;
  $("progress").value = done;
  $("progress-text").textContent = `${done} of ${batch.total}`;
}

async function settleJob(garmentId, job, select) {
  if (job.status === "failed") {
    setTileState(garmentId, "not available", true);
    if (select) say(friendly(new ApiError(job.error.code, job.error.message, 422)));
    return;
  }
  const url = await imageUrl(`/v1/tryon/${job.id}/result`);
  const element = state.tiles.get(garmentId);
  if (element) {
    const result = element.querySelector(".tryon-result");
    result.src = url;
    result.dataset.jobId = job.id;
  }
  setTileState(garmentId, "fitted");
  if (select || !state.selectedJob) showInFittingRoom(garmentId, job.id, url);
}

function showInFittingRoom(garmentId, jobId, url) {
  state.selectedJob = jobId;
  for (const [id, element] of state.tiles) element.classList.toggle("selected", id === garmentId);
  const image = $("fitting-result");
  image.src = url;
  image.dataset.jobId = jobId;
  image.hidden = false;
  $("fitting-placeholder").hidden = true;
  if ($("show-intermediates").checked) showIntermediates();
}

async function showIntermediates() {
  const panel = $("intermediates");
  panel.hidden = !$("show-intermediates").checked;
  if (panel.hidden || !state.selectedJob) return;
  const jobId = state.selectedJob;
  for (const name of ["pose", "parse", "warped"]) {
    const image = $(`int-${name}`);
    try {
      image.src = await imageUrl(`/v1/tryon/${jobId}/intermediates/${name}`);
      image.dataset.jobId = jobId;
    } catch (error) {
      friendly(error);
      image.removeAttribute("src");
    }
  }
}

// ------------------------------------------------------------------------------------------ setup

async function connect(event) {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("fitroom-demo-key", state.key);
  say("");
  try {
    await loadCatalogue();
    document.body.dataset.connected = "true";
  } catch (error) {
    say(friendly(error));
  }
}

async function addGarment(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("sku", file.name.replace(/\.[^.]*$/, ""));
  try {
    await json("/v1/garments", { method: "POST", body: form });
    await loadCatalogue();
  } catch (error) {
    say(friendly(error));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem("fitroom-demo-key") || "";
  $("connect").addEventListener("submit", connect);
  $("photo-upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) usePhoto(file, file.name);
  });
  for (const button of document.querySelectorAll("button.sample")) {
    button.addEventListener("click", async () => {
      const name = button.dataset.sample;
      const blob = await (await fetch(`/demo/static/samples/${name}`)).blob();
      usePhoto(blob, name);
    });
  }
  $("garment-upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) addGarment(file);
  });
  $("try-all").addEventListener("click", tryAll);
  $("show-intermediates").addEventListener("change", showIntermediates);
});
