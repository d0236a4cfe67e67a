// Types of the roomstate browser SDK (roomstate.js: the npm package's module, also served at
// /sdk/roomstate.js). Names and shapes follow daily-js's; docs/sdk.md has the parity table.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** daily-js's participant permissions; roomstate sets `hasPresence` (false: a hidden
 * participant, from its meeting token) and `canAdmin`, and gives the others daily-js's defaults. */
export interface ParticipantPermissions {
  hasPresence: boolean;
  canSend: boolean | Set<string>;
  canReceive: { base: boolean | object };
  canAdmin: boolean | Set<string> | string[];
}

/** A participant: daily-js's data fields (no media ones). */
export interface Participant {
  session_id: string;
  user_id: string;
  user_name: string;
  userData: Json;
  /** When the participant joined (the node's clock). */
  joined_at: Date;
  /** True for participants().local only. */
  local: boolean;
  owner: boolean;
  /** A hidden participant (`hasPresence: false`) sees itself as `local`; owners get
   * `participant-updated` about hidden ones. */
  permissions: ParticipantPermissions;
}

/** The room's participants, the local one included (daily-js's participantCounts()). */
export interface ParticipantCounts {
  present: number;
  hidden: number;
}

/** `local` is this client's participant; every other key is a session id. */
export type Participants = { local: Participant } & { [sessionId: string]: Participant };

export interface MeetingSessionState {
  data: { [key: string]: Json };
}

export type MergeStrategy = "replace" | "shallow-merge";

export type MeetingState =
  | "new" | "loading" | "loaded" | "joining-meeting" | "joined-meeting" | "left-meeting" | "error";

export interface JoinOptions {
  /** The room URL, http(s)://HOST:PORT/rooms/ROOM (or the ws(s):// endpoint itself); required
   * here or in createCallObject(). */
  url?: string;
  /** A meeting token (JWT); required when the node has an API key. Its claims win over userName. */
  token?: string;
  userName?: string;
  userData?: Json;
}

export interface CallObjectOptions extends JoinOptions {
  /** Milliseconds to wait for the reply to each request (default 10000); for join, connecting
   * and the reply together. */
  timeout?: number;
  /** Reconnect delays: attempt n waits between c/2 and c, c = min(capMs, baseMs * 2^n); after
   * maxAttempts failed attempts in a row (default: no limit) the call object gives up. */
  backoff?: { baseMs?: number; capMs?: number; maxAttempts?: number };
  /** The node's frame limit (ROOMSTATE_FRAME_BYTES, default 131072): a bigger request is
   * refused here with `too-large`, as the node would close the connection for it. */
  maxFrameBytes?: number;
}

/** Wire error codes, plus the client's own `connection-closed`, `timeout` and (in the `error`
 * event) `reconnect-failed`. */
export type ErrorCode =
  | "bad-json" | "bad-request" | "unknown-type" | "not-joined" | "already-joined" | "too-large"
  | "unauthorized" | "forbidden" | "rate-limited" | "unavailable" | "internal"
  | "connection-closed" | "timeout" | "reconnect-failed" | "destroyed";

export class RoomstateError extends Error {
  constructor(code: string, message: string, extra?: object);
  code: ErrorCode | string;
  /** The message, under daily-js's name for it. */
  errorMsg: string;
  /** True when the node answered `error`: the request had no effect. */
  fromServer: boolean;
  /** The WebSocket close code, for `connection-closed`. */
  closeCode?: number | null;
  /** For `unavailable` (a busy node shedding joins): milliseconds it asks to wait, if it said. */
  retryAfter?: number;
}

/** daily-js's fatal error types that roomstate reports. */
export type FatalErrorType = "not-allowed" | "connection-error" | "ejected";

/** daily-js's DailyParticipantUpdateOptions: roomstate supports `eject` only. */
export interface ParticipantUpdateOptions {
  eject: true;
}

/** daily-js's `meeting-session-data-error`, and roomstate's own kinds. */
export type NonFatalErrorType =
  | "meeting-session-data-error" | "app-message-error" | "user-data-error" | "node-error" | "resume"
  | "update-participant-error";

interface EventPayloads {
  loading: {};
  loaded: {};
  "joining-meeting": {};
  "joined-meeting": { participants: Participants };
  "participant-joined": { participant: Participant };
  /** Also about a hidden participant, to owners only; it is not added to participants(). */
  "participant-updated": { participant: Participant };
  /** `reason` (roomstate's): left, disconnected, ejected, node-shutdown or node-lost (absent when seen on
   * a reconnect). */
  "participant-left": { participant: Participant; reason?: string };
  "app-message": { data: Json; fromId: string };
  "meeting-session-state-updated": { meetingSessionState: MeetingSessionState };
  /** The counts changed (at most about once a second per room). */
  "participant-counts-updated": { participantCounts: ParticipantCounts };
  /** Fatal: join() failed, or the call object gave up (session taken over, rejoin refused);
   * after a join, `left-meeting` follows. `code`, `closeCode`: roomstate's. */
  error: {
    errorMsg: string;
    error: { type: FatalErrorType; msg: string; details?: { on: "join" | "reconnect"; uri?: string; [key: string]: unknown } };
    code?: string;
    closeCode?: number;
  };
  /** A write that returns no promise was refused (`meeting-session-data-error`,
   * `app-message-error`), a node `error` answering no request (`node-error`), or a resume that
   * lost something (`resume`, `code: "session-lost" | "messages-lost"`). */
  "nonfatal-error": { type: NonFatalErrorType; errorMsg: string; code: string; retryAfter?: number };
  /** `reason`, `closeCode`: roomstate's. */
  "left-meeting": { reason: "left" | "error" | "ejected"; closeCode?: number };
  "call-instance-destroyed": {};
  /** The socket dropped (`interrupted`) or the session is back (`connected`). */
  "network-connection": {
    type: "signaling";
    event: "interrupted" | "connected";
    closeCode?: number;
    resumed?: boolean;
    sessionId?: string;
  };
}

export type EventName = keyof EventPayloads;

/** Every event object carries daily-js's `action` (the event's name) and `callClientId`. */
export type EventMap = {
  [E in EventName]: { action: E; callClientId: string } & EventPayloads[E];
};

export class CallObject {
  constructor(options?: CallObjectOptions);
  readonly callClientId: string;
  /** createCallObject()'s url, token, userName, userData: join()'s defaults. */
  properties: JoinOptions;
  timeout: number;
  backoff: { baseMs?: number; capMs?: number; maxAttempts?: number };
  maxFrameBytes: number;
  /** Set by the join reply; kept across a resumed reconnect. */
  readonly sessionId: string | null;
  readonly resumeToken: string | null;
  /** Log position of the last app message received, sent as `resumeAfter` on a resume. */
  readonly lastSeq: string | null;

  /** Connect and join; resolves with participants(). Rejects with a RoomstateError (and emits
   * `error`). */
  join(options?: JoinOptions): Promise<Participants>;
  leave(): Promise<void>;
  /** Leave, then refuse every call (`destroyed`); emits `call-instance-destroyed`. */
  destroy(): Promise<void>;
  isDestroyed(): boolean;
  /** To every other participant ("*", the default), one session id, or a list of them. A
   * refusal comes as `nonfatal-error` `app-message-error`. Throws `not-joined` before join(). */
  sendAppMessage(data: Json, to?: string | string[]): this;
  /** Eject a participant (an owner's, or a token with canAdmin for participants): it gets
   * `error` (type "ejected") and `left-meeting`, the others `participant-left` with reason
   * "ejected". A refusal comes as `nonfatal-error` `update-participant-error`. */
  updateParticipant(sessionId: string, updates: ParticipantUpdateOptions): this;
  /** participants().local.userData changes at once; rolled back if the node refuses (the
   * promise rejects). */
  setUserData(data: Json): Promise<{ userData: Json }>;
  /** meetingSessionState().data changes at once; rolled back if the node refuses, with
   * `nonfatal-error` `meeting-session-data-error`. `keysToDelete`: roomstate's. */
  setMeetingSessionData(
    data: { [key: string]: Json },
    mergeStrategy?: MergeStrategy,
    keysToDelete?: string[] | null,
  ): void;
  /** Present participants only (hidden ones never appear, but `local` may be hidden). */
  participants(): Participants;
  participantCounts(): ParticipantCounts;
  meetingSessionState(): MeetingSessionState;
  meetingState(): MeetingState;
  on<E extends EventName>(event: E, handler: (event: EventMap[E]) => void): this;
  once<E extends EventName>(event: E, handler: (event: EventMap[E]) => void): this;
  off<E extends EventName>(event: E, handler?: (event: EventMap[E]) => void): this;
}

/** The package's version (the same as the roomstate node's). */
export const VERSION: string;
export const EVENTS: readonly EventName[];
export function createCallObject(options?: CallObjectOptions): CallObject;
export function getCallInstance(callClientId?: string): CallObject | undefined;
/** http://H/rooms/R -> ws://H/v1/rooms/R/ws */
export function roomWsUrl(url: string): string;

/** daily-js's `Daily` factory, plus roomstate's own exports. */
export declare const Daily: {
  createCallObject: typeof createCallObject;
  getCallInstance: typeof getCallInstance;
  version(): string;
  CallObject: typeof CallObject;
  RoomstateError: typeof RoomstateError;
  roomWsUrl: typeof roomWsUrl;
  EVENTS: typeof EVENTS;
  VERSION: string;
};
export default Daily;
