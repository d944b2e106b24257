// How the conversation is drawn: questions, answers, and what each Dify event does to an answer.
//
// Plain DOM, no framework. Answer text is only ever set as text (never innerHTML): it comes
// from a model and must not become markup. Section numbers refer to difytw's
// dify-contract.md.

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // never innerHTML: answers are untrusted text
  return node;
}

function keepScrolledToEnd(update) {
  // Follow the stream only when the reader is already at the end; someone scrolling back to
  // read an earlier answer must not be pulled down by every token.
  const scroller = document.scrollingElement;
  const atEnd = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
  update();
  if (atEnd) scroller.scrollTop = scroller.scrollHeight;
}

export function appendQuestion(container, query, fileName) {
  keepScrolledToEnd(() => {
    const article = element("article", "message user");
    article.append(element("h2", "visually-hidden", "You said"));
    article.append(element("p", "text", query));
    if (fileName) article.append(element("p", "meta", `📎 ${fileName}`));
    container.append(article);
  });
}

/** One assistant message: the step timeline, the answer text, notices and usage. */
export class AnswerView {
  constructor(container) {
    this.article = element("article", "message assistant");
    this.article.dataset.state = "streaming";
    // aria-busy holds back the live region until the answer is complete (see index.html).
    this.article.setAttribute("aria-busy", "true");
    this.article.append(element("h2", "visually-hidden", "Assistant"));
    this.timeline = element("ol", "timeline");
    this.timeline.hidden = true;
    this.timeline.setAttribute("aria-label", "Steps");
    this.answer = element("p", "text answer");
    // One text node that grows with appendData: no re-parsing or re-layout of earlier text.
    this.answerText = document.createTextNode("");
    this.answer.append(this.answerText);
    this.typing = element("span", "typing", "");
    this.typing.setAttribute("aria-hidden", "true");
    this.answer.append(this.typing);
    this.meta = element("p", "meta");
    this.steps = new Map();
    this.article.append(this.timeline, this.answer, this.meta);
    keepScrolledToEnd(() => container.append(this.article));
  }

  append(text) {
    if (text) keepScrolledToEnd(() => this.answerText.appendData(text));
  }

  replace(text) {
    keepScrolledToEnd(() => (this.answerText.data = text ?? ""));
  }

  /** Add or update the timeline step `key`; `status` is running|succeeded|failed|stopped|... */
  step(key, label, status, info, detail) {
    let item = this.steps.get(key);
    if (!item) {
      item = {
        li: element("li", "step"),
        label: element("span", "step-label"),
        info: element("span", "step-info"),
        details: null,
      };
      item.li.append(item.label, item.info);
      this.steps.set(key, item);
      this.timeline.hidden = false;
      keepScrolledToEnd(() => this.timeline.append(item.li));
    }
    item.li.dataset.state = status;
    item.label.textContent = label;
    item.info.textContent = info ?? (status === "running" ? "" : status);
    if (detail) {
      if (!item.details) {
        item.details = element("details");
        item.details.append(element("summary", "", "details"), element("pre"));
        item.li.append(item.details);
      }
      item.details.querySelector("pre").textContent = detail;
    }
  }

  file(url, type) {
    // Only web links: a javascript: URL in a model's output must not become a clickable script.
    let href;
    try {
      href = new URL(url, location.href);
    } catch {
      return; // not a URL at all
    }
    if (href.protocol !== "https:" && href.protocol !== "http:") return;
    const link = element("a", "file", type === "image" ? "🖼 image" : "📎 file");
    link.href = href.href;
    link.target = "_blank";
    link.rel = "noopener";
    this.meta.before(link);
  }

  notice(text, kind = "note") {
    const note = element("p", `notice ${kind}`, text);
    if (kind === "error") note.setAttribute("role", "alert");
    keepScrolledToEnd(() => this.article.append(note));
  }

  usage(usage) {
    if (!usage) return;
    const parts = [];
    if (usage.total_tokens !== undefined) parts.push(`${usage.total_tokens} tokens`);
    if (typeof usage.latency === "number") parts.push(`${usage.latency.toFixed(1)} s`);
    this.meta.textContent = parts.join(" · ");
  }

  finish(outcome) {
    this.typing.remove();
    this.article.dataset.state = outcome;
    this.article.setAttribute("aria-busy", "false");
  }
}

/** Apply one Dify event to the view; return true when it ends the turn (2.6 "Terminal"). */
export function applyEvent(payload, view, turn) {
  if (typeof payload.conversation_id === "string" && payload.conversation_id) {
    turn.conversationId = payload.conversation_id; // to send back to continue (2.4)
  }
  const data = payload.data ?? {};
  switch (payload.event) {
    case "message":
      // A New Agent app closes with one `message` that repeats the whole answer after its
      // agent_message deltas (2.6): appending it would show the answer twice.
      if (turn.agentDeltas) view.replace(payload.answer);
      else view.append(payload.answer);
      return false;
    case "agent_message":
      turn.agentDeltas = true;
      view.append(payload.answer);
      return false;
    case "message_replace": // output moderation replaced the answer so far (2.6)
      view.replace(payload.answer);
      return false;
    case "agent_thought":
      showThought(view, payload);
      return false;
    case "message_file":
      view.file(payload.url, payload.type);
      return false;
    case "workflow_started":
      turn.workflow = true;
      view.step("workflow", "Workflow", "running");
      return false;
    case "node_started":
    case "iteration_started":
    case "loop_started":
      view.step(data.id, data.title ?? data.node_type ?? "Step", "running");
      return false;
    case "node_retry":
      view.step(data.id, data.title ?? "Step", "running", `retry ${data.retry_index ?? ""}`);
      return false;
    case "node_finished":
    case "iteration_completed":
    case "loop_completed":
      view.step(data.id, data.title ?? "Step", data.status ?? "succeeded", seconds(data), data.error);
      return false;
    case "workflow_finished":
      view.step("workflow", "Workflow", data.status, seconds(data));
      if (data.status !== "succeeded" && data.error) view.notice(data.error, "error");
      return true;
    case "workflow_paused":
      view.notice("The workflow paused and is waiting for input.");
      return true;
    case "message_end":
      view.usage(payload.metadata?.usage);
      // A chatflow still sends workflow_finished after message_end (2.6), so only a plain
      // chat or agent answer is over here.
      return !turn.workflow;
    case "error":
      // In-stream errors keep the HTTP status 200 and carry their own `status` (2.5). Show
      // every one: some clients only check status 400 and miss the 500s.
      view.notice(`${payload.message || "The answer failed."} (${payload.code ?? "error"})`, "error");
      return true;
    default:
      // ping never reaches here (no data line); tts_message, reasoning_chunk and events added
      // by future Dify versions are not shown by this page (2.6, 7: pass unknown events).
      return false;
  }
}

function showThought(view, thought) {
  // The same thought (id, position) is re-sent as it fills: empty, then with its tool call,
  // then with the tool's observation (2.6). Only tool calls become steps; a thought without a
  // tool is the answer itself, which agent_message already streams.
  if (!thought.tool) return;
  const names = thought.tool.split(";").map((name) => thought.tool_labels?.[name]?.en_US ?? name);
  const done = Boolean(thought.observation);
  const detail = [
    thought.thought,
    thought.tool_input && `Input: ${thought.tool_input}`,
    thought.observation && `Result: ${thought.observation}`,
  ]
    .filter(Boolean)
    .join("\n");
  view.step(thought.id, `🔧 ${names.join(", ")}`, done ? "succeeded" : "running", done ? "done" : "", detail);
}

function seconds(data) {
  return typeof data.elapsed_time === "number" ? `${data.elapsed_time.toFixed(2)} s` : undefined;
}
