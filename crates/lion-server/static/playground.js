// LION playground: talks to this server's /v1/caption, /v1/vqa, /v1/ground and /v1/tags.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, img: null, box: null, tagsAvailable: false };
const LABELS = {
  caption: ["Prompt (optional)", "e.g. A short image caption:"],
  vqa: ["Question", "e.g. What is on the table?"],
  ground: ["Expression", "e.g. the red car on the left"],
  tags: ["", ""],
};
const FIELD = { caption: "prompt", vqa: "question", ground: "expression" };

function setStatus(text, st) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = st;
}

function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = !msg;
}

async function checkHealth() {
  try {
    const r = await fetch("/health");
    const h = await r.json();
    const tasks = h.tasks || {};
    state.tagsAvailable = !!tasks.tags;
    for (const opt of $("task").options) {
      opt.disabled = !tasks[opt.value];
      if (opt.disabled) opt.textContent += " (no model)";
    }
    const on = Object.keys(tasks).filter((k) => tasks[k]);
    $("health").textContent = `server ${h.status}, version ${h.version}; models for: ${on.join(", ") || "none"}`;
  } catch (err) {
    $("health").textContent = "cannot reach the server: " + err;
  }
}

function draw() {
  const c = $("canvas");
  const ctx = c.getContext("2d");
  if (!state.img) return;
  const s = Math.min(480 / state.img.width, 360 / state.img.height, 1e9);
  c.width = Math.max(1, Math.round(state.img.width * s));
  c.height = Math.max(1, Math.round(state.img.height * s));
  ctx.drawImage(state.img, 0, 0, c.width, c.height);
  if (state.box) {
    const [x1, y1, x2, y2] = state.box.map((v) => v * s);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#ff2d55";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  c.dataset.box = state.box ? state.box.map((v) => v.toFixed(1)).join(",") : "";
}

function useFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showError(`${file.name} is not an image (${file.type || "unknown type"})`);
    return;
  }
  showError("");
  const img = new Image();
  img.onload = () => {
    state.file = file;
    state.img = img;
    state.box = null;
    $("drop-hint").hidden = true;
    draw();
    $("run").disabled = false;
    setStatus(`${file.name}: ${img.width}×${img.height}`, "ready");
  };
  img.onerror = () => showError(`cannot show ${file.name}`);
  img.src = URL.createObjectURL(file);
}

function taskChanged() {
  const t = $("task").value;
  const [label, hint] = LABELS[t];
  $("text-label").textContent = label;
  $("text").placeholder = hint;
  $("text").hidden = t === "tags";
  $("text-label").hidden = t === "tags";
}

function form(task) {
  const fd = new FormData();
  fd.append("image", state.file, state.file.name);
  const text = $("text").value.trim();
  if (FIELD[task] && text) fd.append(FIELD[task], text);
  if (task !== "tags") {
    for (const [id, name] of [["num-beams", "num_beams"], ["max-new-tokens", "max_new_tokens"], ["temperature", "temperature"]]) {
      const v = $(id).value.trim();
      if (v) fd.append(name, v);
    }
  }
  return fd;
}

async function post(task, fd) {
  const t0 = performance.now();
  const r = await fetch(`/v1/${task}`, { method: "POST", body: fd });
  const ms = performance.now() - t0;
  const body = await r.json().catch(() => ({ error: `not JSON (HTTP ${r.status})` }));
  if (!r.ok) throw new Error(`${task}: HTTP ${r.status} ${body.error_type || ""}: ${body.error}`);
  return { body, ms };
}

function showTags(tags, note) {
  const tbody = $("tags").querySelector("tbody");
  tbody.replaceChildren();
  for (const t of tags) {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    a.textContent = t.tag;
    const b = document.createElement("td");
    b.className = "score";
    b.textContent = t.score.toFixed(3);
    tr.append(a, b);
    tbody.append(tr);
  }
  $("tags-note").textContent = note;
}

async function run(ev) {
  ev.preventDefault();
  if (!state.file) return;
  const task = $("task").value;
  showError("");
  $("answer").textContent = "";
  $("box").textContent = "";
  $("timing").textContent = "";
  state.box = null;
  draw();
  setStatus(`running ${task}…`, "running");
  $("run").disabled = true;
  try {
    const jobs = [post(task, form(task))];
    if (task !== "tags" && state.tagsAvailable) jobs.push(post("tags", form("tags")));
    const [main, tags] = await Promise.all(jobs);
    const b = main.body;
    const timing = [`${task}: ${main.ms.toFixed(0)} ms`];
    if (task === "tags") {
      $("answer").textContent = b.tags.map((t) => t.tag).join(", ") || "(no tag above its threshold)";
      showTags(b.tags, `${b.tags.length} tags`);
    } else {
      $("answer").textContent = task === "caption" ? b.caption : task === "vqa" ? b.answer : b.text;
      if (tags) {
        showTags(tags.body.tags, `${tags.body.tags.length} tags from the tagger (LION's prompt gets these)`);
        timing.push(`tags: ${tags.ms.toFixed(0)} ms`);
      } else {
        showTags([], "no tagger on this server");
      }
    }
    if (task === "ground") {
      if (b.bbox) {
        state.box = b.bbox;
        $("box").textContent = `box (pixels): [${b.bbox.map((v) => v.toFixed(1)).join(", ")}]`;
      } else {
        $("box").textContent = "no box in the answer";
      }
      draw();
    }
    $("timing").textContent = "time: " + timing.join(", ");
    setStatus("done", "done");
  } catch (err) {
    showError(String(err.message || err));
    setStatus("failed", "error");
  } finally {
    $("run").disabled = false;
  }
}

const zone = $("drop-zone");
zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("over");
  useFile(e.dataTransfer.files[0]);
});
$("image-input").addEventListener("change", (e) => useFile(e.target.files[0]));
$("task").addEventListener("change", taskChanged);
$("ask").addEventListener("submit", run);
taskChanged();
checkHealth();
