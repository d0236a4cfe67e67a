/**
 * roomstate browser SDK: daily-js's call object for the three data-sharing mechanisms (app
 * messages, userData, meeting session data). An ES module with no build step, published as the
 * npm package in this folder (package.json); every node serves it at /sdk/roomstate.js, with its
 * types at /sdk/roomstate.d.ts. The API and how it matches daily-js's are in docs/sdk.md.
 *
 *   import Daily from "/sdk/roomstate.js";        // or from the npm package
 *   const call = Daily.createCallObject();
 *   call.on("app-message", ({ data, fromId }) => console.log(fromId, data));
 *   await call.join({ url: "http://127.0.0.1:8080/rooms/demo", userName: "ada" });
 *   await call.setUserData({ handRaised: true });  // participants().local changes at once
 *   call.setMeetingSessionData({ topic: "crdts" }, "shallow-merge");
 *   call.sendAppMessage({ emoji: "👏" });           // to everyone else
 *
 * It behaves like the Python SDK (node/client.py). Local state changes at once and is kept by
 * rebasing: the node's last state, plus the writes it acknowledged since, plus the writes still
 * in flight; a write the node refuses is rolled back. Unlike the Python SDK it takes a lost
 * connection up again on its own: it reconnects with exponential backoff and jitter and resumes
 * the session (same session id, no leave/join seen by others, missed app messages replayed).
 * Requests made while it reconnects are sent once it is back; those in flight when the socket
 * dropped reject with `connection-closed`. It does not reconnect after `leave()` or when the
 * session was taken over by another connection (close 4003).
 *
 * Large rooms: a hidden participant (Daily's `hasPresence: false`, from its meeting token) is
 * never in participants() but as `local`; an owner still gets `participant-updated` about hidden
 * ones, emitted and not kept. participantCounts() and `participant-counts-updated` give the
 * node's counts; a `participant-events` frame (one loop turn's membership events) is unpacked
 * into the same events, in order; a roster too large for one frame comes as `joined` with
 * `paged: true` and `participants-page` frames after it (the join resolves with the whole). A
 * node shedding joins answers `unavailable` with `retryAfter`
 * (ms): the error carries it, and a reconnect waits at least that long before trying again.
 */

/** The package's version: the same as the node's (`roomstate --version`) and package.json's. */
export const VERSION = "0.1.0";

export const EVENTS = Object.freeze([
  "loading", "loaded", "joining-meeting", "call-instance-destroyed", "joined-meeting", "participant-joined", "participant-updated", "participant-left",
  "app-message", "meeting-session-state-updated", "participant-counts-updated", "error",
  "nonfatal-error", "left-meeting", "network-connection",
]);
const REPLIES = new Set(["joined", "ack", "pong", "error"]);
const PARTICIPANT_EVENTS = new Set(["participant-joined", "participant-updated", "participant-left"]);
const ROOM_PATH = /^(.*)\/rooms\/([A-Za-z0-9._-]{1,64})\/?$/;
const WS_PATH = /\/v1\/rooms\/[A-Za-z0-9._-]{1,64}\/ws$/;
const CLOSE_REPLACED = 4003; // the session was resumed on another connection: never reconnect
const CLOSE_EJECTED = 4004; // an owner ejected us, or the meeting token's time was up: never reconnect
const EJECTED_MESSAGE = "You were ejected from the meeting";
// A rejoin refused with one of these will be refused again: give up. Others (rate-limited,
// unavailable, internal) are retried.
const FATAL_JOIN_CODES = new Set(["unauthorized", "forbidden", "bad-request", "too-large"]);
const PING_IDLE_MS = 15000; // ping the node after this long without a frame from it
const OPENING = new Set(["loading", "loaded", "joining-meeting"]); // meetingState() during join()
// daily-js's fatal error types, for the node's error codes (any other: connection-error)
const FATAL_TYPES = { unauthorized: "not-allowed", forbidden: "not-allowed" };
const instances = new Map(); // callClientId -> call object not destroyed (getCallInstance)

/** An error with a wire `code` (`too-large`, `not-joined`, ...) or a client one
 * (`connection-closed`, `timeout`); `fromServer` tells them apart. */
export class RoomstateError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "RoomstateError";
    this.code = code;
    this.fromServer = false; // true: the node answered `error`; the request had no effect
    this.closeCode = undefined; // the WebSocket close code, for `connection-closed`
    this.retryAfter = undefined; // ms the node asks to wait, for `unavailable` (when it said)
    this.errorMsg = message; // as daily-js's error events name it
    Object.assign(this, extra);
  }
}

/** The WebSocket endpoint of a room URL: http://H/rooms/R -> ws://H/v1/rooms/R/ws. A path prefix
 * before /rooms/ is kept (a node behind a proxy path); an endpoint URL is returned as it is. */
export function roomWsUrl(url) {
  const parsed = new URL(url, globalThis.location?.href);
  const scheme = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" }[parsed.protocol];
  if (!scheme) throw new TypeError(`a room URL is http(s)://HOST:PORT/rooms/ROOM, not ${url}`);
  parsed.protocol = scheme;
  parsed.hash = "";
  if (WS_PATH.test(parsed.pathname)) return parsed.href;
  const match = ROOM_PATH.exec(parsed.pathname);
  if (!match) throw new TypeError(`a room URL's path is /rooms/ROOM (1-64 of A-Za-z0-9._-), not ${url}`);
  parsed.pathname = `${match[1]}/v1/rooms/${match[2]}/ws`;
  return parsed.href;
}

/** A session-data write applied to a local copy, as the node applies it to the replica. */
function applyWrite(base, [data, strategy, keysToDelete]) {
  if (strategy === "replace") return { ...data };
  const merged = { ...base, ...data };
  for (const key of keysToDelete) delete merged[key];
  return merged;
}

/** JSON with object keys sorted, as the node encodes state (so key order does not count). */
function canonical(value) {
  return JSON.stringify(value, (_, v) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
      : v,
  );
}

const same = (a, b) => canonical(a) === canonical(b);

/** Whether log position `a` ("N" or a Redis stream id "MS-N") comes after `b`. A node can
 * deliver two app messages out of log order (its own after another node's), and the resume
 * replay starts after the one the client quotes. */
function seqAfter(a, b) {
  const x = a.split("-"), y = b.split("-");
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const p = x[i] ?? "0", q = y[i] ?? "0";
    if (p.length !== q.length) return p.length > q.length; // digits, no leading zeros
    if (p !== q) return p > q;
  }
  return false;
}

/** A participant as daily-js describes one: the node's fields, `local`, `joined_at` as a Date
 * and `permissions` (daily-js's defaults, the node's over them). */
function toParticipant(wire, local) {
  const joined = wire.joined_at;
  return {
    ...wire,
    local,
    owner: wire.owner === true,
    joined_at: typeof joined === "number" ? new Date(joined) : joined,
    permissions: { hasPresence: true, canSend: true, canReceive: { base: true }, canAdmin: false, ...wire.permissions },
  };
}

/** A copy the app may change without changing ours. */
const copyParticipant = (p) => ({
  ...p,
  joined_at: p.joined_at instanceof Date ? new Date(p.joined_at) : p.joined_at,
  permissions: { ...p.permissions },
});

/** daily-js's `error.type` for a fatal error of code `code`, with where it happened. */
function fatalError(code, msg, details) {
  return { type: FATAL_TYPES[code] ?? "connection-error", msg, details };
}

/** Whether a participant object is a hidden one's (Daily's `hasPresence: false`). */
const isHidden = (participant) => participant?.permissions?.hasPresence === false;

/** The error for an `error` frame; `retryAfter` (ms) only when the node gave a usable one. */
function serverError(frame) {
  const extra = { fromServer: true };
  const { retryAfter } = frame;
  if (typeof retryAfter === "number" && retryAfter >= 0) extra.retryAfter = retryAfter;
  return new RoomstateError(frame.code, frame.message, extra);
}

function checkEvent(event) {
  if (!EVENTS.includes(event)) throw new TypeError(`unknown event ${event}; the events are ${EVENTS.join(", ")}`);
  return event;
}

/** One participant's connection to one room at a time, like daily-js's call object. */
export class CallObject {
  /** `timeout`: ms to wait for each reply (for join: connecting and the reply together);
   * `backoff`: reconnect delays in ms, and `maxAttempts` reconnects in a row before giving up
   * (default: no limit); `maxFrameBytes`: the node's frame limit (ROOMSTATE_FRAME_BYTES): a bigger
   * frame is refused here, as the node would close the connection for it. */
  constructor({
    timeout = 10000, backoff = { baseMs: 250, capMs: 5000 }, maxFrameBytes = 131072, url, token, userName, userData,
  } = {}) {
    this.properties = { url, token, userName, userData }; // join()'s defaults, as daily-js keeps them
    this.callClientId = globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
    this.timeout = timeout;
    this.maxFrameBytes = maxFrameBytes;
    this.backoff = backoff;
    this.sessionId = null; // set by the `joined` reply
    this.resumeToken = null; // the `joined` reply's: takes the session up again after a drop
    this.lastSeq = null; // log position of the last app message received (`resumeAfter`)
    this._state = "new"; // meetingState(): new, loading, loaded, joining-meeting, joined-meeting, left-meeting, error
    this._leaving = false; // leave() runs: the meeting is over for requests and reconnects
    this._destroyed = false;
    this._connected = false; // joined on the current socket (false while reconnecting)
    this._ws = null;
    this._wsUrl = null;
    this._joinArgs = {};
    this._ids = 0;
    this._pending = new Map(); // request id -> {resolve, reject, timer} waiting for its reply
    this._waiting = []; // {resolve, reject} of requests made while reconnecting
    this._attempt = 0; // reconnect attempts since the last successful join
    this._retryTimer = null;
    this._pinger = null;
    this._lastHeard = 0; // Date.now() of the last frame from the node
    this._local = null;
    this._userDataBase = null; // the node's userData for us as far as known: joined, or the last write answered
    this._userDataPending = new Map(); // request id -> userData written, not answered yet
    this._others = new Map(); // session id -> present participant (hidden ones are never kept)
    this._counts = { present: 0, hidden: 0 }; // the node's participantCounts, latest
    this._paged = null; // a `joined` waiting for its participants-page frames
    this._sessionBase = {}; // the node's last state + writes acknowledged since
    this._sessionPending = new Map(); // request id -> [data, mergeStrategy, keysToDelete]
    this._sessionView = {}; // the base with the pending writes applied
    this._handlers = new Map(); // event -> [handler]
  }

  // -- requests --

  /** Connect to the room at `url` and join it; resolves with participants(). Options not given
   * come from createCallObject()'s. */
  async join(options = {}) {
    const { url, token, userName, userData } = { ...this.properties, ...options };
    this._checkAlive();
    if (!["new", "left-meeting", "error"].includes(this._state)) {
      throw new RoomstateError("already-joined", "this call object is in a meeting; call leave() first");
    }
    this._wsUrl = roomWsUrl(url);
    this._joinArgs = { token, userName, userData };
    Object.assign(this, { sessionId: null, resumeToken: null, lastSeq: null, _local: null, _attempt: 0 });
    this._counts = { present: 0, hidden: 0 };
    this._others.clear();
    this._forgetSession();
    this._setState("loading");
    try {
      await this._connect(false);
    } catch (err) {
      const failed = OPENING.has(this._state) && !this._leaving;
      if (failed) this._state = "error";
      this._teardown();
      if (failed) {
        const on = { on: "join", uri: this._wsUrl, sourceError: { code: err.code, message: err.message } };
        const errorMsg = `could not join the room: ${err.message}`;
        this._emit("error", { errorMsg, error: fatalError(err.code, errorMsg, on), code: err.code });
      }
      throw err;
    }
    return this.participants();
  }

  /** Send `data` to every other participant ('*'), one session id, or a list of them; returns
   * the call object, as daily-js does. A refusal comes as `nonfatal-error` (`app-message-error`). */
  sendAppMessage(data, to = "*") {
    this._checkJoined();
    this._request("send-app-message", { data, to }).catch((err) => this._nonfatal("app-message-error", err));
    return this;
  }

  /** daily-js's updateParticipant: `updateParticipant(sessionId, {eject: true})` ejects that
   * participant (an owner's, or a token with canAdmin for participants). Returns the call object,
   * as daily-js; a refusal comes as `nonfatal-error` `update-participant-error` (code `forbidden`
   * for a non-owner). Only `eject` is supported: other updates throw a TypeError. */
  updateParticipant(sessionId, updates) {
    this._checkJoined();
    if (typeof sessionId !== "string" || !sessionId) throw new TypeError("updateParticipant needs a session id");
    const keys = Object.keys(updates ?? {});
    if (keys.length !== 1 || updates.eject !== true) {
      throw new TypeError("updateParticipant supports one update: {eject: true}");
    }
    this._request("update-participant", { sessionId, eject: true })
      .catch((err) => this._nonfatal("update-participant-error", err));
    return this;
  }

  /** Replace the local participant's userData: locally at once, then on the node; resolves with
   * `{userData}` once the node took it. */
  async setUserData(data) {
    this._checkJoined();
    const id = ++this._ids;
    this._userDataPending.set(id, data);
    this._local.userData = data;
    await this._request("set-user-data", { data }, id);
    return { userData: data };
  }

  /** Write the room's session data ('replace' or 'shallow-merge'); local state at once. Returns
   * nothing, as daily-js; a refusal comes as `nonfatal-error` (`meeting-session-data-error`). */
  setMeetingSessionData(data, mergeStrategy = "replace", keysToDelete = []) {
    this._checkJoined();
    keysToDelete = keysToDelete ?? []; // (null: none, as the node takes it)
    const id = ++this._ids;
    this._sessionPending.set(id, [data, mergeStrategy, keysToDelete]);
    this._refreshSession();
    const fields = { data, mergeStrategy };
    if (keysToDelete.length) fields.keysToDelete = keysToDelete;
    this._request("set-meeting-session-data", fields, id).catch((err) => this._nonfatal("meeting-session-data-error", err));
  }

  /** Leave the room and close the socket; safe to call at any time, more than once. */
  async leave() {
    if (["new", "left-meeting", "error"].includes(this._state) || this._leaving) return;
    const connected = this._connected;
    this._leaving = true;
    clearTimeout(this._retryTimer);
    if (connected) await this._send("leave").catch(() => {}); // best effort: we go either way
    this._teardown();
    this._forgetSession(); // meetingSessionState() is the room's only while in it
    this._counts = { present: 0, hidden: 0 }; // and so are the counts
    this._leaving = false;
    this._setState("left-meeting", { reason: "left" });
  }

  /** Leave, then make the call object unusable (daily-js's destroy()); `call-instance-destroyed`. */
  async destroy() {
    if (this._destroyed) return;
    await this.leave();
    this._destroyed = true;
    instances.delete(this.callClientId);
    this._emit("call-instance-destroyed", {});
    this._handlers.clear();
  }

  isDestroyed() {
    return this._destroyed;
  }

  // -- local state --

  /** `{local: the local participant, <session id>: participant, ...}` (copies). */
  participants() {
    const result = {};
    for (const [sid, participant] of this._others) result[sid] = copyParticipant(participant);
    if (this._local) result.local = copyParticipant(this._local);
    return result;
  }

  /** `{present, hidden}`: the room's participants, this one included, as the node last counted
   * them (daily-js's participantCounts()). */
  participantCounts() {
    return { ...this._counts };
  }

  /** `{data}`: the node's converged state with this client's writes applied. */
  meetingSessionState() {
    return { data: { ...this._sessionView } };
  }

  /** new, loading, loaded, joining-meeting, joined-meeting, left-meeting or error, as daily-js's
   * (it stays joined-meeting while reconnecting and while leave() runs). */
  meetingState() {
    return this._state;
  }

  // -- events --

  /** Call `handler(event)` for each event named `event`. */
  on(event, handler) {
    const handlers = this._handlers.get(checkEvent(event)) ?? [];
    this._handlers.set(event, [...handlers, handler]);
    return this;
  }

  /** Call `handler(event)` for the next event named `event` only. */
  once(event, handler) {
    const wrapper = (payload) => {
      this.off(event, wrapper);
      handler(payload);
    };
    wrapper.listener = handler; // so off(event, handler) removes it too
    return this.on(event, wrapper);
  }

  /** Remove `handler` (also one given to once()) from `event`, or every handler of `event`. */
  off(event, handler) {
    const handlers = this._handlers.get(checkEvent(event)) ?? [];
    this._handlers.set(event, handler ? handlers.filter((h) => h !== handler && h.listener !== handler) : []);
    return this;
  }

  // -- internals: the connection --

  /** Open a socket and join (or, with `resume`, take the session up again). */
  _connect(resume) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this._wsUrl);
      this._ws = ws;
      const deadline = Date.now() + this.timeout; // connecting and the join's reply, together
      const opening = setTimeout(() => ws.close(), this.timeout);
      ws.onopen = () => {
        clearTimeout(opening);
        if (!resume) this._setState("loaded");
        if (!resume) this._setState("joining-meeting");
        const { token, userName, userData } = this._joinArgs;
        // After a drop, the userData the node took (or may have): a resume the node refuses
        // becomes a fresh join. Writes still waiting are sent after it, each on its own.
        const fields = { token, userName, userData: this._local ? this._userDataBase : userData };
        if (resume) Object.assign(fields, { resume: this.resumeToken, resumeAfter: this.lastSeq });
        for (const key of Object.keys(fields)) if (fields[key] == null) delete fields[key];
        this._send("join", fields, ++this._ids, Math.max(0, deadline - Date.now())).then(resolve, reject);
      };
      ws.onmessage = (message) => this._onFrame(message.data);
      ws.onclose = ({ code }) => {
        clearTimeout(opening);
        const message = `could not join at ${this._wsUrl} (close code ${code})`;
        reject(new RoomstateError("connection-closed", message, { closeCode: code })); // no-op once joined
        this._onClose(ws, code);
      };
    });
  }

  /** The socket `ws` closed (or was given up on) with `code`. */
  _onClose(ws, code) {
    if (ws !== this._ws) return; // an old socket, already replaced
    this._paged = null;
    const wasUp = this._connected;
    this._ws = null;
    this._connected = false;
    clearInterval(this._pinger);
    const closed = new RoomstateError("connection-closed", `the connection closed (code ${code})`, { closeCode: code });
    for (const [id, pending] of this._pending) {
      clearTimeout(pending.timer);
      this._settle(id, true); // maybe applied: kept until the node's next state says otherwise
      pending.reject(closed);
    }
    this._pending.clear();
    if (!this._inMeeting() || !wasUp) return; // joining, leaving, or a failed reconnect
    if (code === CLOSE_REPLACED) {
      this._fail(`the node closed the connection (code ${code}); not reconnecting`, code);
      return;
    }
    if (code === CLOSE_EJECTED) { // daily-js's ejection: `error` of type "ejected", `left-meeting`
      this._fail(EJECTED_MESSAGE, code, "ejected", "ejected");
      return;
    }
    this._emit("network-connection", { type: "signaling", event: "interrupted", closeCode: code });
    this._retry();
  }

  /** Reconnect after a delay: exponential backoff with "equal jitter" (half fixed, half random). */
  _retry(retryAfter = 0) {
    const { baseMs = 250, capMs = 5000, maxAttempts = Infinity } = this.backoff;
    if (this._attempt >= maxAttempts) {
      this._fail(`could not reconnect to the room in ${maxAttempts} attempts`, undefined, "reconnect-failed");
      return;
    }
    const ceiling = Math.min(capMs, baseMs * 2 ** this._attempt++);
    this._retryTimer = setTimeout(async () => {
      if (!this._inMeeting()) return;
      try {
        await this._connect(true);
      } catch (err) {
        if (!this._inMeeting()) return;
        const attempt = this._ws; // still open if the node refused the join
        this._ws = null;
        attempt?.close();
        if (!FATAL_JOIN_CODES.has(err.code)) return this._retry(err.retryAfter ?? 0);
        this._fail(`could not rejoin the room: ${err.message}`, undefined, err.code);
      }
    }, Math.max(retryAfter, ceiling / 2 + (Math.random() * ceiling) / 2)); // a busy node's delay first
  }

  /** Give up: the meeting is over for this call object. `error` carries daily-js's `errorMsg` and
   * `error: {type, msg, details}`; `code` and `closeCode` are roomstate's. */
  _fail(errorMsg, closeCode, code, type) {
    this._state = "error";
    this._teardown();
    const error = fatalError(code, errorMsg, { on: "reconnect", uri: this._wsUrl, closeCode });
    if (type) error.type = type;
    this._emit("error", { errorMsg, error, closeCode, code });
    this._emit("left-meeting", { reason: type === "ejected" ? "ejected" : "error", closeCode });
  }

  /** Close the socket, stop the timers, fail the queued requests, forget the other people. */
  _teardown() {
    clearTimeout(this._retryTimer);
    clearInterval(this._pinger);
    const ws = this._ws;
    if (ws) {
      ws.close();
      this._onClose(ws, 1000);
    }
    const waiting = this._waiting.splice(0);
    const gone = new RoomstateError("not-joined", "the call object left the meeting");
    for (const request of waiting) request.reject(gone);
    this._others.clear();
  }

  /** Ping after a quiet spell; no reply in time means the socket is dead though still "open". */
  _startPinger() {
    clearInterval(this._pinger);
    this._pinger = setInterval(() => {
      const ws = this._ws;
      if (!ws || !this._connected || Date.now() - this._lastHeard < PING_IDLE_MS) return;
      this._send("ping").catch((err) => {
        if (err.code !== "timeout" || ws !== this._ws) return;
        ws.close();
        this._onClose(ws, 1006);
      });
    }, PING_IDLE_MS);
  }

  // -- internals: requests and replies --

  _checkJoined() {
    this._checkAlive();
    if (!this._inMeeting()) throw new RoomstateError("not-joined", "call join() first");
  }

  _checkAlive() {
    if (this._destroyed) {
      throw new RoomstateError("destroyed", "this call object was destroyed; make another with Daily.createCallObject()");
    }
  }

  /** In the meeting (connected or reconnecting) and not leaving it. */
  _inMeeting() {
    return this._state === "joined-meeting" && !this._leaving;
  }

  /** Move to meetingState() `state` and emit the event of the same name. */
  _setState(state, payload = {}) {
    this._state = state;
    this._emit(state, payload);
  }

  /** A request that returns no promise failed: a `nonfatal-error` of daily-js's shape. */
  _nonfatal(type, err) {
    const extra = err.retryAfter === undefined ? {} : { retryAfter: err.retryAfter };
    this._emit("nonfatal-error", { type, errorMsg: err.message, code: err.code, ...extra });
  }

  /** A public request: waits while reconnecting, then sends. */
  async _request(type, fields, id = ++this._ids) {
    try {
      this._checkJoined();
      if (!this._connected) await this._untilReconnected();
    } catch (err) {
      this._settle(id, false);
      throw err;
    }
    return this._send(type, fields, id);
  }

  /** Wait for the session to be back, at most `timeout` ms (then reject with `timeout`). */
  _untilReconnected() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._waiting = this._waiting.filter((entry) => entry !== waiter);
        reject(new RoomstateError("timeout", `not reconnected within ${this.timeout} ms`));
      }, this.timeout);
      const waiter = {
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (err) => (clearTimeout(timer), reject(err)),
      };
      this._waiting.push(waiter);
    });
  }

  /** Send one frame with an id; resolves with the reply, rejects on `error`, close or after
   * `timeoutMs`. */
  _send(type, fields = {}, id = ++this._ids, timeoutMs = this.timeout) {
    return new Promise((resolve, reject) => {
      const ws = this._ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        this._settle(id, false); // never sent: roll the local write back
        reject(new RoomstateError("connection-closed", "not connected", { closeCode: null }));
        return;
      }
      const frame = JSON.stringify({ type, id, ...fields });
      const bytes = new TextEncoder().encode(frame).length;
      if (bytes > this.maxFrameBytes) { // the node would close the connection (1009): not sent
        this._settle(id, false);
        reject(new RoomstateError("too-large", `the ${type} frame is ${bytes} bytes; the frame limit is ${this.maxFrameBytes}`));
        return;
      }
      const timer = setTimeout(() => {
        this._pending.delete(id);
        this._settle(id, true); // maybe applied: keep it until the node says otherwise
        reject(new RoomstateError("timeout", `no reply to ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      ws.send(frame);
    });
  }

  /** A write answered (`ok`: stored, or maybe: no reply) is folded into the base; one refused,
   * or never sent, is dropped. */
  _settle(id, ok) {
    if (this._userDataPending.has(id)) {
      // The local userData is the newest write not answered yet, else the last the node took
      // (a refused write is undone even when an earlier one, refused too, is still pending).
      const data = this._userDataPending.get(id);
      this._userDataPending.delete(id);
      if (ok) this._userDataBase = data;
      const pending = [...this._userDataPending.values()];
      if (this._local) this._local.userData = pending.length ? pending[pending.length - 1] : this._userDataBase;
      return;
    }
    const write = this._sessionPending.get(id);
    if (write === undefined) return;
    this._sessionPending.delete(id);
    if (ok) this._sessionBase = applyWrite(this._sessionBase, write);
    this._refreshSession();
  }

  /** Drop the room's session data and the writes still waiting (leaving, or joining anew). */
  _forgetSession() {
    this._sessionBase = {};
    this._sessionPending.clear();
    this._userDataPending.clear();
    this._refreshSession();
  }

  _refreshSession() {
    let view = this._sessionBase;
    for (const write of this._sessionPending.values()) view = applyWrite(view, write);
    this._sessionView = { ...view };
  }

  /** Apply one server frame to local state, answer its request, emit its event. */
  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    this._lastHeard = Date.now();
    if (frame.type === "joined" && frame.paged === true) { // its pages follow it at once
      const { paged, ...rest } = frame;
      this._paged = rest;
      return;
    }
    if (frame.type === "participants-page" && this._paged) { // the reply is the whole
      Object.assign(this._paged.participants, frame.participants);
      if (frame.last !== true) return;
      frame = this._paged;
      this._paged = null;
    }
    const { type, ...content } = frame;
    const pending = "id" in frame ? this._pending.get(frame.id) : undefined;
    if (REPLIES.has(type) && pending) {
      this._pending.delete(frame.id);
      clearTimeout(pending.timer);
      if (type === "error") {
        this._settle(frame.id, false);
        pending.reject(serverError(frame));
        return;
      }
      this._settle(frame.id, true);
      if (type === "joined") this._onJoined(frame);
      pending.resolve(content);
    } else if (type === "error" || type === "nonfatal-error") {
      const { code, message, ...rest } = content; // an error not answering a waiting request
      this._emit("nonfatal-error", { ...rest, type: "node-error", errorMsg: message, code });
    } else if (PARTICIPANT_EVENTS.has(type)) {
      this._onParticipant(type, content);
    } else if (type === "participant-events") { // one loop turn's, in order
      for (const { type: kind, ...entry } of content.events) {
        if (PARTICIPANT_EVENTS.has(kind)) this._onParticipant(kind, entry);
      }
    } else if (type === "participant-counts-updated") {
      this._counts = { ...content.participantCounts };
      this._emit(type, { action: type, participantCounts: this.participantCounts() });
    } else if (type === "meeting-session-state-updated") {
      this._sessionBase = { ...content.meetingSessionState.data };
      this._refreshSession();
      this._emit(type, content);
    } else if (type === "app-message") {
      const { seq, ...event } = content;
      if (typeof seq === "string" && (this.lastSeq === null || seqAfter(seq, this.lastSeq))) this.lastSeq = seq;
      this._emit(type, event);
    }
  }

  /** One participant event about someone else (alone or from a batch): applied, then emitted.
   * A batch lists our own too: skipped. One about a hidden participant (an owner gets them) is
   * emitted but not kept. */
  _onParticipant(type, content) {
    const sid = content.participant.session_id;
    if (sid === this.sessionId) return;
    const participant = toParticipant(content.participant, false);
    if (type === "participant-left" || isHidden(participant)) this._others.delete(sid);
    else this._others.set(sid, participant);
    this._emit(type, { ...content, participant: copyParticipant(participant) });
  }

  /** A `joined` reply: the first join, a resumed session, or a fresh join after a refused resume. */
  _onJoined(frame) {
    const first = this._state !== "joined-meeting";
    const resumed = frame.resumed === true;
    const before = { others: this._others, session: this._sessionView, userData: this._userDataBase };
    const askedReplay = this.lastSeq !== null;
    // Replay from the joined frame's position from now on: what came before it is in its snapshot or
    // replayed right after it. (Kept at an older position, a resume that replayed nothing would
    // make every later resume ask for a position the log may have dropped.)
    if (typeof frame.seq === "string") this.lastSeq = frame.seq;
    else if (!resumed) this.lastSeq = null;
    this.sessionId = frame.sessionId;
    this.resumeToken = frame.resumeToken ?? null;
    const participants = { ...frame.participants };
    const mine = participants[this.sessionId];
    delete participants[this.sessionId];
    this._local = toParticipant(mine ?? { session_id: this.sessionId, userData: null }, true);
    this._userDataBase = this._local.userData;
    const waitingWrites = [...this._userDataPending.values()]; // shown at once, sent after this
    if (waitingWrites.length) this._local.userData = waitingWrites[waitingWrites.length - 1];
    this._others = new Map(
      Object.entries(participants).filter(([, p]) => !isHidden(p)).map(([sid, p]) => [sid, toParticipant(p, false)]),
    );
    const hidden = isHidden(this._local) ? 1 : 0; // a node from before counts: the ones listed
    this._counts = frame.participantCounts
      ? { ...frame.participantCounts }
      : { present: this._others.size + 1 - hidden, hidden };
    this._sessionBase = { ...frame.meetingSessionState.data };
    this._refreshSession(); // keeps the writes queued while reconnecting
    this._connected = true;
    this._attempt = 0;
    this._startPinger();
    if (first) {
      this._setState("joined-meeting", { participants: this.participants() });
    } else {
      this._emitChanges(before);
      if (!resumed) {
        const errorMsg = "the session could not be resumed; joined again as a new session";
        this._emit("nonfatal-error", { type: "resume", code: "session-lost", errorMsg });
      } else if (frame.replayed === false && askedReplay) {
        const errorMsg = "app messages sent while disconnected could not be replayed";
        this._emit("nonfatal-error", { type: "resume", code: "messages-lost", errorMsg });
      }
      if (resumed && !same(before.userData, this._userDataBase)) {
        // a write the node may have missed (no reply came before the drop): send it again
        this._userDataBase = before.userData;
        if (!waitingWrites.length) this._local.userData = before.userData;
        this._send("set-user-data", { data: before.userData }).catch((err) => this._nonfatal("user-data-error", err));
      }
      this._emit("network-connection", { type: "signaling", event: "connected", resumed, sessionId: this.sessionId });
    }
    for (const request of this._waiting.splice(0)) request.resolve();
  }

  /** After a reconnect: the participant and session-data events missed while away. */
  _emitChanges(before) {
    for (const [sid, participant] of this._others) {
      const old = before.others.get(sid);
      if (!old) this._emit("participant-joined", { participant: copyParticipant(participant) });
      else if (!same(old, participant)) this._emit("participant-updated", { participant: copyParticipant(participant) });
    }
    for (const [sid, participant] of before.others) {
      if (!this._others.has(sid)) this._emit("participant-left", { participant: copyParticipant(participant) });
    }
    if (!same(before.session, this._sessionView)) {
      this._emit("meeting-session-state-updated", { meetingSessionState: { data: { ...this._sessionView } } });
    }
  }

  /** Run an event's handlers with `{action: event, callClientId, ...payload}` (daily-js's event
   * object); a failing handler is logged, never thrown. */
  _emit(event, content) {
    const payload = { action: event, callClientId: this.callClientId, ...content };
    for (const handler of this._handlers.get(event) ?? []) {
      try {
        handler(payload);
      } catch (err) {
        console.error(`roomstate: the ${event} handler failed`, err);
      }
    }
  }
}

/** A new call object (daily-js: `Daily.createCallObject()`). Unlike daily-js, a page may have
 * several at once. */
export function createCallObject(options) {
  const call = new CallObject(options);
  instances.set(call.callClientId, call);
  return call;
}

/** The call object `callClientId`, or the first not destroyed (daily-js's getCallInstance()). */
export function getCallInstance(callClientId) {
  if (callClientId !== undefined) return instances.get(callClientId);
  return instances.values().next().value;
}

/** The default export: daily-js's `Daily` (`Daily.createCallObject()`), plus roomstate's own. */
export const Daily = Object.freeze({
  createCallObject, getCallInstance, version: () => VERSION, CallObject, RoomstateError, roomWsUrl, EVENTS, VERSION,
});

export default Daily;
