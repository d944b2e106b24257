// Server-Sent Events over fetch(): an incremental parser and a stream reader.
//
// Dify's generation endpoints are POSTs with a JSON body, so the browser's EventSource (GET
// only) cannot be used (dify-contract.md 2.1); the page reads the response body itself.
// Network reads do not line up with events: one read can hold several events, half of one, or
// half of a UTF-8 character (contract 8.4). So bytes go through a streaming TextDecoder and text
// through a line parser that keeps whatever is unfinished for the next read.
//
// The parser follows WHATWG HTML "9.2.6 Interpreting an event stream"; no dependencies, so
// this file can be copied into any app as it is.

/** One dispatched event: `event` is the SSE event type ("message" unless an `event:` line said
 * otherwise), `data` the data lines joined with "\n", `id` the last event id seen. */
export class ServerSentEvent {
  constructor(event, data, id) {
    this.event = event;
    this.data = data;
    this.id = id;
  }
}

/** Turns text, fed in arbitrary pieces, into ServerSentEvents. */
export class EventStreamParser {
  constructor() {
    this.buffer = ""; // text not yet terminated by a line end
    this.scanFrom = 0; // where to resume looking for a line end, so long lines cost O(n)
    this.skipLF = false; // the last piece ended in CR: a leading LF is that CRLF's second half
    this.data = [];
    this.eventType = "";
    this.lastId = "";
  }

  /** Parse `text` (already decoded) and return the events it completed, in order. */
  push(text) {
    const events = [];
    // A read that ended inside a UTF-8 character decodes to "" and must not clear skipLF.
    if (text === "") return events;
    if (this.skipLF && text.startsWith("\n")) text = text.slice(1);
    this.skipLF = false;
    this.buffer += text;
    let start = 0;
    for (;;) {
      const end = this.findLineEnd(this.buffer, Math.max(start, this.scanFrom));
      if (end < 0) break;
      const line = this.buffer.slice(start, end);
      let next = end + 1;
      // 9.2.6: a line ends with CRLF, LF or CR. A CR at the very end of the buffer may be half
      // of a CRLF whose LF is in the next piece; remember to drop that LF.
      if (this.buffer[end] === "\r") {
        if (next === this.buffer.length) this.skipLF = true;
        else if (this.buffer[next] === "\n") next += 1;
      }
      start = this.scanFrom = next;
      const event = this.processLine(line);
      if (event) events.push(event);
    }
    this.buffer = this.buffer.slice(start);
    this.scanFrom = this.buffer.length;
    return events;
  }

  /** End of the stream. 9.2.6: an event that was not ended by a blank line is discarded, so
   * nothing is returned; the caller learns from its own state that the answer is incomplete. */
  end() {
    this.buffer = "";
    this.scanFrom = 0;
    this.data = [];
    this.eventType = "";
  }

  findLineEnd(text, from) {
    for (let i = from; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 10 || c === 13) return i;
    }
    return -1;
  }

  processLine(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return null; // a comment: proxies use these as keep-alives
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1); // only one space is part of the syntax
    switch (field) {
      case "event":
        this.eventType = value;
        break;
      case "data":
        this.data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.lastId = value;
        break;
      // "retry" only matters to EventSource's reconnection; unknown fields are ignored (9.2.6).
    }
    return null;
  }

  dispatch() {
    // A block without data lines is not dispatched: this is how Dify's keep-alive,
    // "event: ping" on its own, disappears (contract 2.1, 2.3).
    const hadData = this.data.length > 0;
    const event = hadData
      ? new ServerSentEvent(this.eventType || "message", this.data.join("\n"), this.lastId)
      : null;
    this.data = [];
    this.eventType = "";
    return event;
  }
}

/** Yield the ServerSentEvents of a fetch() Response as they arrive.
 *
 * Aborting the fetch's AbortSignal makes the pending read reject with an AbortError, which
 * propagates to the caller's `for await`; a dropped connection rejects with a TypeError. */
export async function* readEventStream(response) {
  const reader = response.body.getReader();
  // {stream: true} keeps the bytes of a character split across two reads until the rest
  // arrives; decoding each read on its own would turn both halves into U+FFFD.
  const decoder = new TextDecoder("utf-8");
  const parser = new EventStreamParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
    yield* parser.push(decoder.decode());
    parser.end();
  } finally {
    // Leaving the loop early (break, throw in the consumer) must not leave the body locked
    // and the connection open.
    reader.cancel().catch(() => {});
  }
}

/** The JSON payload of an event, or undefined when the data is not JSON.
 *
 * Dify sends one JSON object per data line, but proxies, load balancers and future versions
 * may add other data; an app should skip what it cannot read rather than fail the answer. */
export function jsonData(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return undefined;
  }
}
