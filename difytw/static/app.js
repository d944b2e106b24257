// The demo chat: streams Dify answers through difyproxy and shows them as they arrive.
//
// Meant to be copied: no framework, no build step. This module makes the requests and runs the
// controls; transcript.js draws the conversation, sse.js parses the stream. Every Dify call
// goes to the proxy's /dify prefix, never to Dify itself, because the proxy holds the app key
// (dify-contract.md 9.8) and stops the Dify task when this page goes away (contract 4).
// Section numbers below refer to difytw's dify-contract.md.

import { jsonData, readEventStream } from "./sse.js";
import { AnswerView, appendQuestion, applyEvent, element } from "./transcript.js";

const API = "/dify/v1";
const FAULT_HEADER = "X-Replay-Fault"; // honoured by difytw's replay server only

const $ = (id) => document.getElementById(id);
const ui = {
  transcript: $("transcript"),
  suggestions: $("suggestions"),
  composer: $("composer"),
  query: $("query"),
  send: $("send"),
  stop: $("stop"),
  file: $("file"),
  attachment: $("attachment"),
  attachmentName: $("attachment-name"),
  attachmentRemove: $("attachment-remove"),
  fault: $("fault"),
  newChat: $("new-chat"),
  status: $("status"),
};

const state = {
  conversationId: "", // "" starts a new conversation; Dify returns the id in every frame (2.4)
  user: endUserId(),
  parameters: null,
  upload: null, // {id, name, type} of a file uploaded for the next question
  uploading: false,
  running: null, // AbortController of the answer being streamed
};

// -- the end user ------------------------------------------------------------------------------

function endUserId() {
  // Dify scopes conversations and files to `user` but never checks it (1.1). A real app lets
  // its server set `user` from the login session (9.7); this demo keeps one random id per
  // browser so that reloading the page keeps the same Dify end user.
  const key = "difytw-demo-user";
  try {
    let id = localStorage.getItem(key);
    if (!id) {
      id = `demo-${randomHex(16)}`;
      localStorage.setItem(key, id);
    }
    return id;
  } catch {
    return `demo-${randomHex(16)}`; // storage disabled (private mode): one id per page load
  }
}

function randomHex(bytes) {
  // crypto.randomUUID exists only in secure contexts; a phone on the LAN over plain http is not.
  const values = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (b) => b.toString(16).padStart(2, "0")).join("");
}

function announce(text) {
  ui.status.textContent = text;
}

async function describeHttpError(response) {
  const text = await response.text().catch(() => "");
  let detail = "";
  try {
    // Dify's errors are JSON {code, message, status} (3); an empty message is a known quirk
    // of 413 file_too_large, so the code is always shown too.
    const body = JSON.parse(text);
    if (body && typeof body === "object" && ("message" in body || "code" in body)) {
      detail = `${body.message || "no message"} (${body.code ?? "error"})`;
    }
  } catch {
    // Errors made in front of Dify (nginx 413, 502, Cloudflare 524) are HTML pages (3).
  }
  const status = `${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  return `Error ${status}: ${detail || "the server gave no details."}`;
}

function isEventStream(response) {
  // The answer's own type decides, not response_mode: a failed streaming request gets JSON (9.4).
  return (response.headers.get("Content-Type") ?? "").startsWith("text/event-stream");
}

async function ask(query) {
  if (state.running || state.uploading || !query.trim()) return;
  const upload = state.upload;
  clearAttachment();
  hideSuggestions();
  appendQuestion(ui.transcript, query, upload?.name);
  const view = new AnswerView(ui.transcript);
  const controller = new AbortController();
  setRunning(controller);
  const turn = {
    conversationId: state.conversationId,
    agentDeltas: false,
    workflow: false,
    ended: false,
  };
  let outcome = "done";
  try {
    const headers = { "Content-Type": "application/json" };
    if (ui.fault.value) headers[FAULT_HEADER] = ui.fault.value;
    const response = await fetch(`${API}/chat-messages`, {
      method: "POST",
      headers,
      body: JSON.stringify({
        inputs: {},
        query,
        response_mode: "streaming",
        conversation_id: state.conversationId,
        user: state.user,
        files: upload
          ? [{ type: upload.type, transfer_method: "local_file", upload_file_id: upload.id }]
          : [],
      }),
      signal: controller.signal,
    });
    if (!response.ok) {
      outcome = "error";
      view.notice(await describeHttpError(response), "error");
      return;
    }
    if (!isEventStream(response)) {
      outcome = "error";
      view.notice(`Expected a stream, got ${response.headers.get("Content-Type")}.`, "error");
      return;
    }
    for await (const event of readEventStream(response)) {
      const payload = jsonData(event);
      // Data that is not a JSON object is not Dify's; skip it rather than fail (see sse.js).
      if (payload === null || typeof payload !== "object") continue;
      if (applyEvent(payload, view, turn)) turn.ended = true;
      state.conversationId = turn.conversationId;
      if (payload.event === "error") outcome = "error";
    }
    if (!turn.ended) {
      // Dify's streams end with a terminal event; a stream that just stops was cut on the
      // way (a proxy timeout, a dropped connection upstream, Dify's 300 s idle end: 2.3).
      outcome = "error";
      view.notice("The stream ended before the answer was complete.", "error");
    }
  } catch (error) {
    if (error.name === "AbortError") {
      outcome = "stopped";
      view.notice("Stopped.");
    } else {
      outcome = "error";
      view.notice(`Connection lost: ${error.message}. The answer may be incomplete.`, "error");
    }
  } finally {
    view.finish(outcome);
    setRunning(null);
    announce(outcome === "done" ? "Answer complete." : outcome === "stopped" ? "Stopped." : "The answer failed.");
  }
}

function setRunning(controller) {
  state.running = controller;
  ui.send.hidden = Boolean(controller);
  ui.stop.hidden = !controller;
  ui.send.disabled = state.uploading;
}

// -- opening statement and suggestions (GET /parameters, 1.2) ----------------------------------

async function loadParameters() {
  try {
    const response = await fetch(`${API}/parameters`);
    if (!response.ok) throw new Error(await describeHttpError(response));
    state.parameters = await response.json();
  } catch (error) {
    const view = new AnswerView(ui.transcript);
    view.notice(`Could not load the app's settings. ${error.message}`, "error");
    view.finish("error");
    return;
  }
  if (state.parameters.file_upload?.enabled === false) ui.file.closest("label").hidden = true;
  greet();
}

function greet() {
  const parameters = state.parameters;
  if (!parameters) return;
  if (parameters.opening_statement) {
    const view = new AnswerView(ui.transcript);
    view.append(parameters.opening_statement);
    view.finish("done");
  }
  ui.suggestions.replaceChildren(
    ...(parameters.suggested_questions ?? []).map((question) => {
      const button = element("button", "suggestion", question);
      button.type = "button";
      button.addEventListener("click", () => ask(question));
      return button;
    }),
  );
  ui.suggestions.hidden = false;
}

function hideSuggestions() {
  ui.suggestions.hidden = true;
}

// -- file upload (POST /files/upload, 1.2) -----------------------------------------------------

function difyFileType(mimeType) {
  // Dify's file types are image, document, audio, video and custom (1.2).
  const kind = (mimeType ?? "").split("/")[0];
  return ["image", "audio", "video"].includes(kind) ? kind : "document";
}

async function uploadFile(file) {
  state.uploading = true;
  ui.send.disabled = true;
  showAttachment(`${file.name} — uploading…`);
  try {
    const form = new FormData();
    form.append("file", file);
    form.append("user", state.user); // the upload belongs to the same end user (1.1)
    // No Content-Type header: the browser sets multipart/form-data with its boundary.
    const response = await fetch(`${API}/files/upload`, { method: "POST", body: form });
    if (!response.ok) throw new Error(await describeHttpError(response));
    const uploaded = await response.json();
    state.upload = {
      id: uploaded.id,
      name: uploaded.name ?? file.name,
      type: difyFileType(uploaded.mime_type || file.type),
    };
    showAttachment(`📎 ${state.upload.name}`);
  } catch (error) {
    state.upload = null;
    showAttachment(`${file.name}: ${error.message}`);
    ui.attachment.classList.add("error");
  } finally {
    state.uploading = false;
    ui.send.disabled = false;
  }
}

function showAttachment(text) {
  ui.attachment.classList.remove("error");
  ui.attachmentName.textContent = text;
  ui.attachment.hidden = false;
}

function clearAttachment() {
  state.upload = null;
  ui.attachment.hidden = true;
  ui.attachmentName.textContent = "";
}

// -- wiring ------------------------------------------------------------------------------------

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const query = ui.query.value;
  if (!query.trim() || state.running || state.uploading) return;
  ui.query.value = "";
  resizeComposer();
  ask(query);
});

ui.query.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter adds a line. While an IME is composing (Chinese, Japanese...),
  // Enter confirms the characters and must not send the half-typed question.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

function resizeComposer() {
  ui.query.style.height = "auto";
  ui.query.style.height = `${Math.min(ui.query.scrollHeight, 160)}px`;
}
ui.query.addEventListener("input", resizeComposer);

ui.stop.addEventListener("click", () => {
  // Aborting closes the connection. Dify would keep generating (4), so difyproxy calls Dify's
  // stop endpoint for this task when it sees the client leave; with the key and `user` on the
  // server, the page has no stop call of its own to make.
  state.running?.abort();
  ui.query.focus();
});

ui.file.addEventListener("change", () => {
  const file = ui.file.files[0];
  ui.file.value = ""; // so that choosing the same file again fires "change" again
  if (file) uploadFile(file);
});

ui.attachmentRemove.addEventListener("click", clearAttachment);

ui.newChat.addEventListener("click", () => {
  state.running?.abort();
  state.conversationId = "";
  clearAttachment();
  ui.transcript.replaceChildren();
  greet();
  ui.query.focus();
});

loadParameters();
