// Types of the roomstate browser SDK (roomstate.js, served at /sdk/roomstate.js). See docs/sdk.md.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A participant as the node describes it; `joined_at` is Unix time in milliseconds. */
export interface Participant {
  session_id: string;
  user_id: string;
  user_name: string;
  userData: Json;
  joined_at: number;
  owner: boolean;
  /** Only on a hidden participant (Daily's `hasPresence: false`, from its meeting token): the
   * local one sees itself with it; owners get `participant-updated` about hidden ones. */
  permissions?: { hasPresence: false };
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

export type MeetingState = "new" | "joining" | "joined" | "leaving" | "left-meeting" | "error";

export interface JoinOptions {
  /** The room URL, http(s)://HOST:PORT/rooms/ROOM (or the ws(s):// endpoint itself). */
  url: string;
  /** A meeting token (JWT); required when the node has an API key. Its claims win over userName. */
  token?: string;
  userName?: string;
  userData?: Json;
}

export interface CallObjectOptions {
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
  | "connection-closed" | "timeout" | "reconnect-failed";

export class RoomstateError extends Error {
  constructor(code: string, message: string, extra?: object);
  code: ErrorCode | string;
  /** True when the node answered `error`: the request had no effect. */
  fromServer: boolean;
  /** The WebSocket close code, for `connection-closed`. */
  closeCode?: number | null;
  /** For `unavailable` (a busy node shedding joins): milliseconds it asks to wait, if it said. */
  retryAfter?: number;
}

export interface EventMap {
  "joined-meeting": { participants: Participants };
  "participant-joined": { participant: Participant };
  /** Also about a hidden participant, to owners only; it is not added to participants(). */
  "participant-updated": { participant: Participant };
  /** `reason`: left, disconnected, node-shutdown or node-lost (absent when seen on a reconnect). */
  "participant-left": { participant: Participant; reason?: string };
  "app-message": { data: Json; fromId: string };
  "meeting-session-state-updated": { meetingSessionState: MeetingSessionState };
  /** The counts changed (at most about once a second per room). */
  "participant-counts-updated": {
    action: "participant-counts-updated";
    participantCounts: ParticipantCounts;
  };
  /** Fatal: the call object gave up (session taken over, rejoin refused); `left-meeting` follows. */
  error: { errorMsg: string; closeCode?: number; code?: string };
  /** A node `error` not answering a request (e.g. rate-limited), or a resume that lost something
   * (`type: "resume"`, `code: "session-lost" | "messages-lost"`). */
  "nonfatal-error": { type?: string; code: string; message: string; retryAfter?: number };
  "left-meeting": { reason: "left" | "error"; closeCode?: number };
  /** The socket dropped (`interrupted`) or the session is back (`connected`). */
  "network-connection": {
    type: "signaling";
    event: "interrupted" | "connected";
    closeCode?: number;
    resumed?: boolean;
    sessionId?: string;
  };
}

export type EventName = keyof EventMap;

export class CallObject {
  constructor(options?: CallObjectOptions);
  timeout: number;
  backoff: { baseMs?: number; capMs?: number; maxAttempts?: number };
  maxFrameBytes: number;
  /** Set by the join reply; kept across a resumed reconnect. */
  readonly sessionId: string | null;
  readonly resumeToken: string | null;
  /** Log position of the last app message received, sent as `resumeAfter` on a resume. */
  readonly lastSeq: string | null;

  /** Connect and join; resolves with participants(). Rejects with a RoomstateError. */
  join(options: JoinOptions): Promise<Participants>;
  leave(): Promise<void>;
  /** To every other participant ("*", the default), one session id, or a list of them. */
  sendAppMessage(data: Json, to?: string | string[]): Promise<void>;
  /** participants().local.userData changes at once; rolled back if the node refuses. */
  setUserData(data: Json): Promise<void>;
  /** meetingSessionState().data changes at once; rolled back if the node refuses. */
  setMeetingSessionData(
    data: { [key: string]: Json },
    mergeStrategy?: MergeStrategy,
    keysToDelete?: string[],
  ): Promise<void>;
  /** Present participants only (hidden ones never appear, but `local` may be hidden). */
  participants(): Participants;
  participantCounts(): ParticipantCounts;
  meetingSessionState(): MeetingSessionState;
  meetingState(): MeetingState;
  on<E extends EventName>(event: E, handler: (event: EventMap[E]) => void): this;
  off<E extends EventName>(event: E, handler?: (event: EventMap[E]) => void): this;
}

export const EVENTS: readonly EventName[];
export function createCallObject(options?: CallObjectOptions): CallObject;
/** http://H/rooms/R -> ws://H/v1/rooms/R/ws */
export function roomWsUrl(url: string): string;

declare const _default: {
  createCallObject: typeof createCallObject;
  CallObject: typeof CallObject;
  RoomstateError: typeof RoomstateError;
  roomWsUrl: typeof roomWsUrl;
  EVENTS: typeof EVENTS;
};
export default _default;
