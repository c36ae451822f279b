// wsgateway browser client: an ES module with no dependencies, served by the gateway at
// GET /client.js. It follows the same rules as the Python SDK (wsgateway/client/): connect
// with backoff and jitter, subscribe, resume every topic with `since` after any disconnect,
// drop duplicates, repair a hole inside a connection by unsubscribing and subscribing the
// topic again with `since`, and yield each update of its topics once, in order, or a gap
// where the gateway lost some for good. It takes snapshots (a topic's whole state) and
// conflated updates (`from_seq`), keeps each topic's last value and, for a book topic, a copy
// of its book checked against every `checksum` the gateway sends (a copy that disagrees, or
// that a reset broke, is replaced: the topic is subscribed again without `since`, which
// brings a snapshot). With `positionHeartbeat`, a heartbeat position past the one held is a
// hole, repaired like any other. docs/protocol.md is the contract it implements.
//
//   import { Client } from "/client.js";
//   const client = new Client("", "trades", ["BTC-USD"]);   // "": the page's own gateway
//   client.addEventListener("state", (e) => console.log(e.detail.state));
//   for await (const event of client) {
//     if (event.kind === "update") console.log(event.topic, event.seq, event.data);
//     else if (event.kind === "gap") { /* lost for good: rebuild what depends on it */ }
//   }
//   // a book topic ("orderbook"): after a snapshot or update event,
//   client.book("BTC-USD").bids(10);   // [[price, qty], ...] best first, as text
//
// Sections, as in the Python SDK: the pure parts (Backoff, the policy functions, Streams)
// take no socket and no clock and are exported for tests; Client does the I/O.
//
// What a browser cannot do, and what this module does instead:
// - set headers on a WebSocket: the token goes in `?token=` (the gateway takes both);
// - see the HTTP answer of a refused upgrade: a 401, 404 or 429 looks exactly like an
//   unreachable host (a close event 1006 with no reason, before `open`). Such failures are
//   retried with backoff; the `state` events count them (`failures`), say "failing" from
//   FAILING_AFTER on, and `maxFailures` (default: never) stops the client with a ClientStopped;
// - send WebSocket pings: it sends the protocol's own {"type":"ping"} every `heartbeat`
//   seconds and reconnects when nothing at all arrived for twice that long;
// - hold back the server: a WebSocket in a browser has no backpressure, so events the
//   application does not take wait in memory (read them, or the tab grows).

/** Close codes after which moving to another node at once is right (1001 shutdown, 1012
 * drain), jittered so that a node's clients do not all arrive in the same instant. */
export const MOVE_ON = new Set([1001, 1012]);
/** Close codes reconnecting would only repeat: the client sent what the gateway never
 * takes (1003, 1007, 1009) or was cut for its behaviour or its token (1008). */
export const FINAL = new Set([1003, 1007, 1008, 1009]);
/** `error` codes answering a subscribe that a resend later may cure. */
export const RETRYABLE_ERRORS = new Set(["rate_limited", "unavailable"]);
/** A connection that lived this long (ms) was a success: the backoff starts over. */
export const STABLE_MS = 10000;
/** Consecutive attempts that ended before `open` after which the state says "failing". */
export const FAILING_AFTER = 5;

/** The client stopped for good: retrying cannot change what stopped it. Thrown by the
 * iterator; the client is closed. `reason`: "closed" (a FINAL close code, `code` and
 * `closeReason` set), "token_expired" (1008 token expired: connect with a fresh token),
 * "subscribe_refused" (`code` is the gateway's error code, `topics` the refused ones),
 * "connect_failed" (`maxFailures` attempts in a row never opened). */
export class ClientStopped extends Error {
  constructor(reason, message, details = {}) {
    super(message);
    this.name = "ClientStopped";
    this.reason = reason;
    Object.assign(this, details);
  }
}

// -- pure: backoff and policy ------------------------------------------------------------

/** Delays (seconds) between attempts: `initial` doubling up to `maximum`, each plus a
 * random fraction of itself (so between d and 2d), so that clients dropped together come
 * back spread out. */
export class Backoff {
  constructor(initial = 0.5, maximum = 20, random = Math.random) {
    if (!(initial > 0 && initial <= maximum)) {
      throw new RangeError(`backoff must be 0 < initial <= maximum, got ${initial}, ${maximum}`);
    }
    this.initial = initial;
    this.maximum = maximum;
    this.random = random;
    this.attempts = 0;
  }

  /** The delay before the next attempt; each call doubles the following one. */
  next() {
    const base = Math.min(this.maximum, this.initial * 2 ** this.attempts);
    this.attempts = Math.min(this.attempts + 1, 64);
    return base * (1 + this.random());
  }

  /** A short jittered delay (0 to `initial`) for moving to another node at once. */
  soon() {
    return this.initial * this.random();
  }

  reset() {
    this.attempts = 0;
  }
}

/** Seconds before reconnecting after a close event, or a ClientStopped to throw. */
export function afterClose(code, reason, backoff) {
  if (FINAL.has(code)) {
    if (code === 1008 && reason.includes("expired")) {
      return new ClientStopped("token_expired", `the gateway closed the connection: ${code} ${reason}`, {
        code,
        closeReason: reason,
      });
    }
    const said = reason ? `: ${reason}` : "";
    return new ClientStopped("closed", `the gateway closed the connection with ${code}${said}`, {
      code,
      closeReason: reason,
    });
  }
  if (MOVE_ON.has(code)) return backoff.soon();
  return backoff.next(); // 1013 slow consumer, 1011, 1006 (no close frame, or refused), ...
}

/** Seconds before sending a refused subscribe again, or a ClientStopped to throw. */
export function afterError(code, message, retryAfter, topics, backoff) {
  if (!RETRYABLE_ERRORS.has(code)) {
    return new ClientStopped(
      "subscribe_refused",
      `the gateway refused the subscribe to ${JSON.stringify(topics)}: ${code}: ${message}`,
      { code, topics },
    );
  }
  return honoured(retryAfter, backoff);
}

/** The gateway's `retry_after` plus a little jitter; the backoff when it gave none. */
export function honoured(retryAfter, backoff) {
  if (typeof retryAfter !== "number" || !(retryAfter >= 0)) return backoff.next();
  return retryAfter + backoff.soon();
}

/** The WebSocket URL of `channel` from the gateway's address in any form: "" or "/" (the
 * page's own gateway), http(s)://host[:port][/prefix], ws(s)://..., or a URL ending in a
 * gateway path (/ws/NAME, /api...). `base`: what a relative URL is resolved against. */
export function channelUrl(url, channel, token, base) {
  const parsed = new URL(url || "/", base);
  const scheme = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" }[parsed.protocol];
  if (!scheme) throw new TypeError(`expected an http(s):// or ws(s):// URL, got ${url}`);
  let path = parsed.pathname.replace(/\/+$/, "");
  path = path.replace(/(\/api\/publish|\/api\/drain|\/api|\/ws\/[^/]+|\/ws|\/demo|\/client\.js)$/, "");
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  return `${scheme}//${parsed.host}${path}/ws/${encodeURIComponent(channel)}${query}`;
}

// -- pure: order books -----------------------------------------------------------------------

/** Levels per side the checksum covers, best first (Kraken's formula). */
export const CHECKSUM_DEPTH = 10;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC32 (IEEE, as zlib.crc32) of an ASCII string, unsigned. */
export function crc32(text) {
  let c = 0xffffffff;
  for (let i = 0; i < text.length; i++) c = CRC_TABLE[(c ^ text.charCodeAt(i)) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The book checksum of `bids` and `asks` (each [[price, qty], ...] best first, canonical
 * text): CRC32 of the best 10 asks then the best 10 bids, each level's price then qty with
 * "." removed and leading zeros stripped. */
export function bookChecksum(bids, asks) {
  const strip = (text) => text.replace(".", "").replace(/^0+/, "");
  let text = "";
  for (const [price, qty] of [...asks.slice(0, CHECKSUM_DEPTH), ...bids.slice(0, CHECKSUM_DEPTH)]) {
    text += strip(price) + strip(qty);
  }
  return crc32(text);
}

/** Prices in order: by value, ties (never for 15 digits) by text; as the gateway orders them. */
function byPrice(a, b) {
  const d = Number(a) - Number(b);
  return d !== 0 ? d : a < b ? -1 : a > b ? 1 : 0;
}

/** A book's data as a book topic sends it ({bids, asks, snapshot?, checksum?}, levels as
 * [price, qty] text pairs), or null when `data` is not book levels (a last-value topic). */
export function readBook(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) return null;
  if (!("bids" in data) && !("asks" in data)) return null;
  const side = (levels) =>
    levels === undefined ||
    (Array.isArray(levels) &&
      levels.every((l) => Array.isArray(l) && l.length === 2 && typeof l[0] === "string" && typeof l[1] === "string"));
  if (!side(data.bids) || !side(data.asks)) return null;
  return {
    bids: data.bids || [],
    asks: data.asks || [],
    snapshot: data.snapshot === true,
    checksum: typeof data.checksum === "number" ? data.checksum : null,
  };
}

/** One topic's order book: qty by price text; `bids()`/`asks()` best first. */
export class Book {
  constructor() {
    this._bids = new Map();
    this._asks = new Map();
    this._sorted = null; // [bids, asks] best first, until the next change
  }

  /** Apply levels (absolute qty, "0" removes); `snapshot`: they are the whole book. */
  apply({ bids = [], asks = [], snapshot = false }) {
    if (snapshot) {
      this._bids.clear();
      this._asks.clear();
    }
    for (const [side, levels] of [[this._bids, bids], [this._asks, asks]]) {
      for (const [price, qty] of levels) {
        if (qty === "0") side.delete(price);
        else side.set(price, qty);
      }
    }
    this._sorted = null;
  }

  /** The bids, highest first: [[price, qty], ...] (at most `depth`). */
  bids(depth = Infinity) {
    return this._levels()[0].slice(0, depth);
  }

  /** The asks, lowest first. */
  asks(depth = Infinity) {
    return this._levels()[1].slice(0, depth);
  }

  checksum() {
    return bookChecksum(this.bids(CHECKSUM_DEPTH), this.asks(CHECKSUM_DEPTH));
  }

  _levels() {
    if (!this._sorted) {
      const bids = [...this._bids].sort((a, b) => byPrice(b[0], a[0]));
      const asks = [...this._asks].sort((a, b) => byPrice(a[0], b[0]));
      this._sorted = [bids, asks];
    }
    return this._sorted;
  }
}

// -- pure: continuity per topic ------------------------------------------------------------

/** The updates a stream misses if its topic now stands at (epoch, seq), or null. A stream
 * that held nothing yet (no epoch, seq 0) counts as the start of any epoch. */
export function lost(stream, topic, epoch, seq) {
  const fresh = stream.epoch === "" && stream.seq === 0;
  const previous = { epoch: stream.epoch, seq: stream.seq };
  if (epoch === stream.epoch || fresh) {
    const first = epoch === stream.epoch ? stream.seq + 1 : 1;
    if (seq < first) return null;
    return { kind: "gap", topic, from_seq: first, to_seq: seq, epoch, previous, reason: "lost" };
  }
  // Another epoch: whatever followed our last update in the old one is gone as well.
  return { kind: "gap", topic, from_seq: 1, to_seq: seq, epoch, previous, reason: "lost" };
}

/** The client's topics. Each on* takes a parsed server frame and returns what it means:
 * events to yield, {hole: topic} to repair (with `since`; `fresh`: without, for a
 * snapshot, after yielding its `gap` if any), or nothing. Mirrors streams.py. */
export class Streams {
  constructor(topics) {
    this.topics = new Map();
    for (const topic of topics) {
      // known: a subscribed reply gave it a position (later subscribes resume it);
      // replayUntil / repairing: this connection's replay, and a repair on its way;
      // book: the topic's book (null: not a book, or not trusted); resync: the book is
      // being replaced (subscribed again without since; updates dropped until the snapshot).
      this.topics.set(topic, {
        epoch: "", seq: 0, known: false, data: undefined, book: null,
        replayUntil: 0, repairing: false, resync: false,
      });
    }
  }

  position(topic) {
    const stream = this.stream(topic);
    return { epoch: stream.epoch, seq: stream.seq };
  }

  last(topic) {
    return this.stream(topic).data;
  }

  book(topic) {
    return this.stream(topic).book;
  }

  stream(topic) {
    const stream = this.topics.get(topic);
    if (!stream) throw new RangeError(`not a topic of this client: ${topic}`);
    return stream;
  }

  /** The `since` of a subscribe to `topics`: every topic that has a position. */
  since(topics) {
    const since = {};
    for (const topic of topics) {
      const stream = this.stream(topic);
      // A topic being resynced wants a snapshot, not a replay.
      if (stream.known && !stream.resync) since[topic] = { seq: stream.seq, epoch: stream.epoch };
    }
    return since;
  }

  /** A connection ended: its replay and repairs end with it. */
  disconnected() {
    for (const stream of this.topics.values()) {
      stream.replayUntil = 0;
      stream.repairing = false;
    }
  }

  onSubscribed(positions) {
    const events = [];
    for (const [topic, position] of Object.entries(positions || {})) {
      const stream = this.topics.get(topic);
      if (!stream) continue;
      const epoch = String(position.epoch);
      const seq = Number(position.seq);
      stream.repairing = false;
      if (stream.resync) {
        // The snapshot at this position follows; a topic without state has none.
        stream.epoch = epoch;
        stream.seq = seq;
        if (seq === 0 && position.recovered === undefined) {
          stream.resync = false;
          stream.book = new Book();
        }
      } else if (position.recovered === true) {
        stream.replayUntil = seq;
      } else if (position.recovered === false) {
        const gap = lost(stream, topic, epoch, seq);
        if (gap) events.push(gap);
        stream.epoch = epoch;
        stream.seq = seq;
        if (stream.book) stream.book = new Book(); // the snapshot that follows fills it
      } else if (!stream.known) {
        stream.epoch = epoch;
        stream.seq = seq;
      } // else: `since` was ignored (the connection already had the topic): keep ours.
      stream.known = true;
    }
    return events;
  }

  /** An update: [] (a duplicate, a hole already being repaired, a book being resynced),
   * [update], [gap, update] (a new epoch nobody announced), or {hole: topic} (with
   * `fresh` and a `gap` when a book must be replaced: its checksum disagreed, or a new
   * epoch began past its start). A conflated update (`from_seq`) continues the topic when
   * `from_seq` is the held seq + 1. */
  onUpdate(frame) {
    const stream = this.topics.get(frame.topic);
    if (!stream || stream.resync) return [];
    const topic = frame.topic;
    const seq = Number(frame.seq);
    const first = frame.from_seq == null ? seq : Number(frame.from_seq);
    const events = [];
    if (typeof frame.epoch === "string" && frame.epoch !== stream.epoch) {
      const fresh = stream.epoch === "" && stream.seq === 0;
      if (!fresh || first !== 1) {
        const gap = lost(stream, topic, frame.epoch, first - 1);
        stream.epoch = frame.epoch;
        stream.seq = first - 1;
        if (stream.book) {
          if (first !== 1) {
            // The new epoch's book so far is unknown: ask for it.
            stream.resync = true;
            stream.book = null;
            return { hole: topic, fresh: true, gap };
          }
          stream.book = new Book(); // a new epoch's book starts empty
        }
        if (gap) events.push(gap);
      }
      stream.epoch = frame.epoch;
    }
    if (seq <= stream.seq) return events;
    if (first > stream.seq + 1) {
      if (stream.repairing) return events; // the resubscribe will replay it
      stream.repairing = true;
      return { hole: topic };
    }
    const previous = { epoch: stream.epoch, seq: stream.seq };
    stream.seq = seq;
    stream.data = frame.data;
    stream.known = true;
    const levels = readBook(frame.data);
    if (levels) {
      if (!stream.book) stream.book = new Book();
      stream.book.apply(levels);
      if (levels.checksum !== null && stream.book.checksum() !== levels.checksum) {
        stream.resync = true;
        stream.book = null;
        const gap = { kind: "gap", topic, from_seq: seq, to_seq: seq, epoch: stream.epoch, previous, reason: "checksum" };
        return { hole: topic, fresh: true, gap };
      }
    }
    events.push({
      kind: "update",
      topic,
      seq,
      epoch: stream.epoch,
      ts: Number(frame.ts || 0),
      data: frame.data,
      replayed: seq <= stream.replayUntil,
      from_seq: frame.from_seq == null ? null : first,
    });
    return events;
  }

  /** A snapshot: the topic's whole state at its seq; it replaces the topic's value, book
   * and position. (A snapshot whose own checksum disagrees is reported as a checksum gap
   * but not asked for again: the next one would say the same.) */
  onSnapshot(frame) {
    const stream = this.topics.get(frame.topic);
    if (!stream) return [];
    const topic = frame.topic;
    const previous = { epoch: stream.epoch, seq: stream.seq };
    stream.seq = Number(frame.seq);
    if (typeof frame.epoch === "string" && frame.epoch) stream.epoch = frame.epoch;
    stream.data = frame.data;
    stream.known = true;
    stream.resync = false;
    stream.repairing = false;
    stream.replayUntil = 0;
    stream.book = null;
    const events = [
      { kind: "snapshot", topic, seq: stream.seq, epoch: stream.epoch, ts: Number(frame.ts || 0), data: frame.data },
    ];
    const levels = readBook(frame.data);
    if (levels) {
      const book = new Book();
      book.apply({ ...levels, snapshot: true });
      if (levels.checksum !== null && book.checksum() !== levels.checksum) {
        events.push({ kind: "gap", topic, from_seq: stream.seq, to_seq: stream.seq, epoch: stream.epoch, previous, reason: "checksum" });
      } else {
        stream.book = book;
      }
    }
    return events;
  }

  /** A heartbeat: a topic whose position there is past ours lost updates (a heartbeat
   * never runs ahead of the frames before it): [{hole: topic}, ...]. */
  onHeartbeat(frame) {
    const holes = [];
    const topics = frame.topics;
    if (topics === null || typeof topics !== "object") return holes;
    for (const [topic, position] of Object.entries(topics)) {
      const stream = this.topics.get(topic);
      if (!stream || !stream.known || stream.resync || stream.repairing) continue;
      if (position === null || typeof position !== "object") continue;
      const epoch = String(position.epoch ?? "");
      const seq = Number(position.seq ?? 0);
      if (seq === 0 || (epoch === stream.epoch && seq <= stream.seq)) continue;
      stream.repairing = true;
      holes.push({ hole: topic });
    }
    return holes;
  }

  /** A reset: the topic continues from its (epoch, seq); a gap when updates were lost. */
  onReset(frame) {
    const stream = this.topics.get(frame.topic);
    if (!stream) return [];
    const epoch = String(frame.epoch);
    const seq = Number(frame.seq);
    const events = [{ kind: "reset", topic: frame.topic, epoch, seq }];
    const gap = lost(stream, frame.topic, epoch, seq);
    if (gap) events.push(gap);
    stream.epoch = epoch;
    stream.seq = seq;
    stream.known = true;
    stream.replayUntil = 0;
    if (stream.book) {
      // A book cannot continue over lost updates: ask for it afresh.
      stream.resync = true;
      stream.book = null;
      events.push({ hole: frame.topic, fresh: true });
    }
    return events;
  }
}

// -- the client ----------------------------------------------------------------------------

/** Subscribe to `topics` of `channel` and yield their events, across reconnects.
 *
 * Options: `token` (a JWT for the `user` channel, sent as `?token=`), `backoff`
 * ([initial, maximum] seconds, default [0.5, 20]), `heartbeat` (seconds between protocol
 * pings, default 20; 0: none), `positionHeartbeat` (seconds, 1-3600: ask the gateway for
 * a heartbeat frame that often; a topic whose position there is past the one held lost
 * updates and is repaired), `maxFailures` (consecutive attempts that never open before
 * the client stops; default Infinity), `random` (a source for the jitter).
 *
 * Events: the async iterator yields {kind: "update" | "snapshot" | "reset" | "gap", topic,
 * ...}, as the Python SDK's events (a gap's `reason`: "lost", or "checksum" when the
 * client's book disagreed with the gateway's checksum and a snapshot follows); a kind it
 * does not know is for a later version, so skip it. The
 * connection's state is announced as "state" events (an EventTarget), detail:
 * {state: "connecting" | "open" | "reconnecting" | "failing" | "stopped" | "closed",
 *  delay (s, when reconnecting), code, reason (of the last close), failures, connections}.
 */
export class Client extends EventTarget {
  constructor(url, channel, topics, options = {}) {
    super();
    const names = [...new Set(topics)];
    if (names.length === 0 || names.includes("*")) {
      // A resume names its topics (since); "*" has none to name.
      throw new TypeError('name the topics to subscribe to (not "*": a resume needs names)');
    }
    const base = globalThis.location ? globalThis.location.href : undefined;
    this.url = channelUrl(url, channel, options.token, base);
    this.channel = channel;
    this.topics = names;
    const [initial, maximum] = options.backoff || [0.5, 20];
    this._backoff = new Backoff(initial, maximum, options.random || Math.random);
    this._heartbeat = options.heartbeat ?? 20;
    this._positionHeartbeat = options.positionHeartbeat ?? 0;
    this._maxFailures = options.maxFailures ?? Infinity;
    this._streams = new Streams(names);
    this._events = [];
    this._waiting = null; // the iterator's pending {resolve, reject}
    this._stopped = null; // the ClientStopped the iterator throws
    this._closed = false;
    this._ws = null;
    this._opened = false; // this attempt reached `open`
    this._openedAt = 0;
    this._failures = 0; // attempts in a row that never opened
    this._requests = new Map(); // id: [type, topics]
    this._lastId = 0;
    this._timers = new Set();
    this._lastFrameAt = 0;
    /** connections opened so far */
    this.connections = 0;
    /** the last "state" event's detail */
    this.state = { state: "connecting", failures: 0, connections: 0 };
    this._connect();
  }

  /** {epoch, seq} of the last update of `topic` this client holds ({"", 0} before any). */
  position(topic) {
    return this._streams.position(topic);
  }

  /** The `data` of the newest update or snapshot of `topic` (undefined before the first
   * one); for a book topic that is what changed, and book() is the book. */
  last(topic) {
    return this._streams.last(topic);
  }

  /** The client's copy of `topic`'s book (a Book: bids()/asks() best first, checksum()),
   * checked against every checksum the gateway sent; null when the topic is not a book,
   * or while its copy is being replaced (after a checksum gap, until the snapshot). */
  book(topic) {
    return this._streams.book(topic);
  }

  /** End the connection and the iteration; the client cannot be used again. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close(1000);
    }
    this._announce({ state: this._stopped ? "stopped" : "closed" });
    this._wake();
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** The next event; ends after close(), throws the ClientStopped that stopped the client. */
  next() {
    if (this._events.length) return Promise.resolve({ value: this._events.shift(), done: false });
    if (this._stopped) return Promise.reject(this._stopped);
    if (this._closed) return Promise.resolve({ value: undefined, done: true });
    if (this._waiting) return Promise.reject(new Error("one reader at a time"));
    return new Promise((resolve, reject) => {
      this._waiting = { resolve, reject };
    });
  }

  /** Leaving a for-await loop (break, return, throw) closes the client. */
  return() {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  // -- the work ----------------------------------------------------------------------------

  _connect() {
    if (this._closed) return;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      this._stop(new ClientStopped("connect_failed", `cannot open ${this.url}: ${error.message}`));
      return;
    }
    this._ws = ws;
    this._opened = false;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (message) => this._onMessage(ws, message);
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
    // An error event is always followed by a close event; that one decides.
  }

  _onOpen(ws) {
    if (ws !== this._ws) return;
    this._opened = true;
    this._openedAt = Date.now();
    this._lastFrameAt = this._openedAt;
    this._failures = 0;
    this.connections += 1;
    this._announce({ state: "open" });
    this._subscribe(this.topics, true);
    if (this._heartbeat > 0) this._beat(ws);
  }

  /** Ping every `heartbeat` s; a connection that sent nothing for twice that is dead. */
  _beat(ws) {
    this._after(this._heartbeat, () => {
      if (ws !== this._ws) return;
      if (Date.now() - this._lastFrameAt > 2 * this._heartbeat * 1000) {
        this._drop(null, 1006, "no frame within two heartbeats");
        return;
      }
      this._sendFrame({ type: "ping" });
      this._beat(ws);
    });
  }

  _onMessage(ws, message) {
    if (ws !== this._ws) return;
    this._lastFrameAt = Date.now();
    if (typeof message.data !== "string") return; // binary: not part of the protocol
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    const kind = frame.type;
    if (kind === "update") {
      const verdict = this._streams.onUpdate(frame);
      this._take(Array.isArray(verdict) ? verdict : [verdict]);
    } else if (kind === "snapshot") {
      this._take(this._streams.onSnapshot(frame));
    } else if (kind === "subscribed") {
      this._requests.delete(frame.id);
      this._push(this._streams.onSubscribed(frame.positions));
    } else if (kind === "heartbeat") {
      this._take(this._streams.onHeartbeat(frame));
    } else if (kind === "reset") {
      this._take(this._streams.onReset(frame));
    } else if (kind === "error") {
      this._refused(frame);
    }
    // unsubscribed, pong, and kinds this version does not know: ignored
  }

  /** Yield the events; repair the holes (a fresh one is subscribed without since, as
   * Streams.since leaves a resynced topic out). */
  _take(items) {
    const events = [];
    for (const item of items) {
      if (item.hole === undefined) {
        events.push(item);
        continue;
      }
      if (item.gap) events.push(item.gap);
      this._repair(item.hole);
    }
    this._push(events);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._drop(null, code, reason);
  }

  /** An `error` reply: resend the subscribe later, or stop (afterError). */
  _refused(frame) {
    const request = this._requests.get(frame.id);
    if (!request) return;
    this._requests.delete(frame.id);
    const [kind, topics] = request;
    const retryAfter = typeof frame.retry_after === "number" ? frame.retry_after : null;
    const verdict = afterError(String(frame.code), String(frame.message || ""), retryAfter, topics, this._backoff);
    if (verdict instanceof ClientStopped) {
      this._stop(verdict);
      return;
    }
    if (kind === "unsubscribe") {
      // The repair's subscribe, sent right behind it, found the topic still held and
      // replays nothing: start over on a new connection, which resumes everything.
      this._drop(verdict);
      return;
    }
    const ws = this._ws;
    this._after(verdict, () => {
      if (ws === this._ws) this._subscribe(topics, topics === this.topics);
    });
  }

  /** A hole inside this connection: unsubscribe and subscribe again with `since`; the
   * gateway replays what is missing or says it cannot (a gap). Frames are answered in
   * order, so the subscribe finds the topic released. */
  _repair(topic) {
    this._send("unsubscribe", [topic]);
    this._subscribe([topic]);
  }

  /** `first`: the connection's own subscribe (or its resend), which asks for position
   * heartbeats (a repair's does not: each would restart their count and timer). */
  _subscribe(topics, first = false) {
    this._send("subscribe", topics, this._streams.since(topics), first ? this._positionHeartbeat : 0);
  }

  _send(type, topics, since, heartbeat = 0) {
    this._lastId += 1;
    const frame = { type, topics, id: this._lastId };
    if (since && Object.keys(since).length) frame.since = since;
    if (heartbeat > 0) frame.heartbeat = heartbeat;
    this._requests.set(this._lastId, [type, topics]);
    this._sendFrame(frame);
  }

  _sendFrame(frame) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(frame));
    // else: the close event that follows reports the connection gone.
  }

  /** The connection ended (or is given up): reconnect after `delay`, or after the delay
   * the close code asks for; stop when reconnecting cannot help. */
  _drop(delay, code = 1006, reason = "") {
    const ws = this._ws;
    const opened = this._opened;
    this._ws = null;
    this._clearTimers();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000);
    }
    this._streams.disconnected();
    this._requests.clear();
    if (this._closed) return;
    if (opened && Date.now() - this._openedAt >= STABLE_MS) this._backoff.reset();
    if (!opened) {
      // Refused or unreachable: the browser does not say which (1006, no reason).
      this._failures += 1;
      if (this._failures >= this._maxFailures) {
        this._stop(
          new ClientStopped(
            "connect_failed",
            `${this.url}: ${this._failures} attempts in a row never opened (refused or unreachable; ` +
              "the browser does not say which: check the channel, the token and the allowed origins)",
            { failures: this._failures },
          ),
        );
        return;
      }
    }
    let wait = delay;
    if (wait === null) {
      const verdict = afterClose(code, reason, this._backoff);
      if (verdict instanceof ClientStopped) {
        this._stop(verdict);
        return;
      }
      wait = verdict;
    }
    const failing = this._failures >= FAILING_AFTER;
    this._announce({ state: failing ? "failing" : "reconnecting", delay: wait, code, reason });
    this._after(wait, () => {
      this._announce({ state: "connecting" });
      this._connect();
    });
  }

  _stop(error) {
    this._stopped = error;
    this.close();
  }

  _push(events) {
    if (!events.length) return;
    this._events.push(...events);
    this._wake();
  }

  _wake() {
    const waiting = this._waiting;
    if (!waiting) return;
    this._waiting = null;
    if (this._events.length) waiting.resolve({ value: this._events.shift(), done: false });
    else if (this._stopped) waiting.reject(this._stopped);
    else if (this._closed) waiting.resolve({ value: undefined, done: true });
    else this._waiting = waiting;
  }

  _announce(detail) {
    this.state = { ...detail, failures: this._failures, connections: this.connections };
    if (this._stopped) this.state.error = this._stopped;
    this.dispatchEvent(new CustomEvent("state", { detail: this.state }));
  }

  _after(seconds, fn) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, seconds * 1000);
    this._timers.add(timer);
  }

  _clearTimers() {
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
  }
}
